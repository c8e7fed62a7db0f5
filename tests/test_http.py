"""The HTTP endpoint, served for real on a loopback port."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from celery_prom.config import Ports
from celery_prom.http import Endpoint, HealthReport, MetricsServer, PortInUse, serve_first_free
from celery_prom.webconfig import WebConfigFile
from tests.certs import Pki, make_pki
from tests.support import free_port, free_port_range, listening


class FakeOwner:
    """What a worker or exporter plugs into the server: pure functions of its state."""

    def __init__(self) -> None:
        self.healthy = True
        self.body = "# HELP demo_total Demo.\n# TYPE demo_total counter\ndemo_total 3.0\n"
        self.fail = False
        self.accepted: list[str] = []

    def render(self, accept: str) -> tuple[bytes, str]:
        if self.fail:
            raise RuntimeError("cannot render")
        self.accepted.append(accept)
        return self.body.encode(), "text/plain; version=0.0.4; charset=utf-8"

    def health(self) -> HealthReport:
        return HealthReport(self.healthy, {"broker": "up" if self.healthy else "down"})

    def targets(self) -> tuple[bytes, str]:
        if self.fail:
            raise RuntimeError("cannot list")
        return b"[]", "application/json"

    def endpoint(self, title: str) -> Endpoint:
        return Endpoint(title, self.render, self.health, pages={"/sd/workers": self.targets})


@pytest.fixture
def owner() -> FakeOwner:
    return FakeOwner()


@pytest.fixture
def server(owner: FakeOwner) -> Iterator[MetricsServer]:
    server = MetricsServer("127.0.0.1", free_port(), owner.endpoint("test endpoint"))
    server.start()
    yield server
    server.stop()


def request(
    server: MetricsServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request(method, path, headers=headers or {})
    return connection.getresponse()


def test_metrics_are_the_owners_answer_to_the_accept_header(
    server: MetricsServer, owner: FakeOwner
) -> None:
    plain = request(server, "/metrics")
    asking = request(
        server, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    assert owner.accepted == ["", "application/openmetrics-text; version=1.0.0"]
    for response in (plain, asking):
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        assert response.read().decode() == owner.body


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [("gzip", True), ("deflate, GZIP;q=0.5", True), ("deflate", False), ("", False)],
)
def test_large_bodies_are_gzipped_when_accepted(
    server: MetricsServer, owner: FakeOwner, accept: str, gzipped: bool
) -> None:
    owner.body = "".join(f'demo_total{{n="{i}"}} {i}.0\n' for i in range(200))

    response = request(server, "/metrics", headers={"Accept-Encoding": accept})

    body = response.read()
    assert response.getheader("Content-Encoding") == ("gzip" if gzipped else None)
    assert (gzip.decompress(body) if gzipped else body).decode() == owner.body


def test_a_failing_render_answers_500_and_health_says_why(
    server: MetricsServer, owner: FakeOwner
) -> None:
    owner.fail = True

    response = request(server, "/metrics")
    page = request(server, "/sd/workers")

    assert (response.status, response.read()) == (500, b"metrics unavailable\n")
    assert (page.status, page.read()) == (500, b"/sd/workers unavailable\n")


def test_further_pages_are_the_owners_answers(server: MetricsServer) -> None:
    response = request(server, "/sd/workers?refresh=1")

    assert (response.status, response.getheader("Content-Type"), response.read()) == (
        200,
        "application/json",
        b"[]",
    )


def test_health_reports_the_owners_checks(server: MetricsServer, owner: FakeOwner) -> None:
    healthy = request(server, "/health")
    assert (healthy.status, json.loads(healthy.read())) == (
        200,
        {"healthy": True, "checks": {"broker": "up"}},
    )

    owner.healthy = False
    unhealthy = request(server, "/health")
    assert (unhealthy.status, json.loads(unhealthy.read())) == (
        503,
        {"healthy": False, "checks": {"broker": "down"}},
    )


def test_landing_page_links_the_endpoints(server: MetricsServer) -> None:
    page = request(server, "/").read().decode()

    assert "<title>test endpoint</title>" in page
    assert 'href="/metrics"' in page
    assert 'href="/health"' in page
    assert 'href="/sd/workers"' in page


def test_head_has_headers_and_no_body(server: MetricsServer) -> None:
    response = request(server, "/metrics", method="HEAD")

    assert response.status == 200
    assert int(response.getheader("Content-Length", "0")) > 0
    assert response.read() == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_not_allowed(server: MetricsServer, method: str) -> None:
    response = request(server, "/metrics", method=method)

    assert (response.status, response.getheader("Allow")) == (405, "GET, HEAD")


def test_unknown_paths_are_404(server: MetricsServer) -> None:
    assert request(server, "/nope").status == 404


def test_a_stuck_client_does_not_block_other_scrapes(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as stuck:
        stuck.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finishes its request
        assert request(server, "/metrics").status == 200


def test_a_busy_port_is_reported_by_number(server: MetricsServer, owner: FakeOwner) -> None:
    with pytest.raises(PortInUse) as error:
        MetricsServer("127.0.0.1", server.port, Endpoint("x", owner.render, owner.health))

    assert error.value.strerror == f"port {server.port} on 127.0.0.1 is already in use"


def test_a_range_serves_on_its_first_free_port_and_names_itself_when_full(
    owner: FakeOwner,
) -> None:
    ports = free_port_range(3)
    given = Ports(ports[0], ports[-1])
    with listening(ports[:1]):
        servers = [serve_first_free("127.0.0.1", given, owner.endpoint("x")) for _ in ports[1:]]
        try:
            with pytest.raises(PortInUse) as error:
                serve_first_free("127.0.0.1", given, owner.endpoint("x"))
        finally:
            for server in servers:
                server.stop()

    assert [server.port for server in servers] == list(ports[1:])
    assert error.value.strerror == f"every port of {given} on 127.0.0.1 is already in use"


def test_a_single_port_is_reported_by_number(server: MetricsServer, owner: FakeOwner) -> None:
    with pytest.raises(PortInUse) as error:
        serve_first_free("127.0.0.1", Ports(server.port, server.port), owner.endpoint("x"))

    assert error.value.strerror == f"port {server.port} on 127.0.0.1 is already in use"


def test_stopping_frees_the_port(owner: FakeOwner) -> None:
    port = free_port()
    server = MetricsServer("127.0.0.1", port, Endpoint("x", owner.render, owner.health))
    server.start()
    server.stop()

    again = MetricsServer("127.0.0.1", port, Endpoint("x", owner.render, owner.health))
    again.stop()


def test_ipv6_loopback(owner: FakeOwner) -> None:
    server = MetricsServer("::1", 0, Endpoint("x", owner.render, owner.health))
    server.start()
    try:
        connection = http.client.HTTPConnection("::1", server.port, timeout=10)
        connection.request("GET", "/metrics")
        assert connection.getresponse().status == 200
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def secure_server(owner: FakeOwner, tmp_path: Path, web_config: str) -> MetricsServer:
    path = tmp_path / "web.yml"
    path.write_text(web_config)
    server = MetricsServer(
        "127.0.0.1",
        free_port(),
        owner.endpoint("x"),
        WebConfigFile(str(path)),
    )
    server.start()
    return server


def tls_get(
    server: MetricsServer,
    context: ssl.SSLContext,
    path: str = "/metrics",
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


def client_context(
    pki: Pki, certificate: bool = True, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if certificate:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def test_mutual_tls(owner: FakeOwner, tmp_path: Path, pki: Pki) -> None:
    server = secure_server(
        owner,
        tmp_path,
        f"""
tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.server_key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {pki.ca}
  min_version: TLS13
""",
    )
    try:
        assert tls_get(server, client_context(pki)).status == 200
        for refused in (
            client_context(pki, certificate=False),
            client_context(pki, maximum=ssl.TLSVersion.TLSv1_2),
        ):
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                tls_get(server, refused).read()
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_get(server, ssl.create_default_context(cafile=str(pki.other_ca)))
        # Plain HTTP on a TLS port is no way in either.
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            request(server, "/metrics").read()
    finally:
        server.stop()


def test_basic_auth_over_tls(owner: FakeOwner, tmp_path: Path, pki: Pki) -> None:
    hashed = bcrypt.hashpw(b"scrape-me", bcrypt.gensalt(rounds=4)).decode()
    server = secure_server(
        owner,
        tmp_path,
        f"""
tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.server_key}
basic_auth_users:
  prometheus: {hashed}
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
""",
    )
    context = client_context(pki, certificate=False)
    good = {"Authorization": "Basic " + base64.b64encode(b"prometheus:scrape-me").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"prometheus:guess").decode()}
    try:
        denied = tls_get(server, context)
        assert (denied.status, denied.getheader("WWW-Authenticate")) == (
            401,
            'Basic realm="celery-prom"',
        )
        assert tls_get(server, context, headers=bad).status == 401
        assert tls_get(server, context, "/health", headers=bad).status == 401
        assert tls_get(server, context, "/sd/workers", headers=bad).status == 401
        assert tls_get(server, context, "/sd/workers", headers=good).status == 200
        allowed = tls_get(server, context, headers=good)
        assert (allowed.status, allowed.getheader("X-Content-Type-Options")) == (200, "nosniff")
    finally:
        server.stop()


def test_a_client_that_never_completes_the_handshake_blocks_nobody(
    owner: FakeOwner, tmp_path: Path, pki: Pki
) -> None:
    server = secure_server(
        owner,
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n",
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port)):
            assert tls_get(server, client_context(pki, certificate=False)).status == 200
    finally:
        server.stop()
