"""The HTTP endpoint both the worker and the exporter serve: /metrics, /health and /.

A small threaded server from the standard library: each connection has its own thread and
socket timeout, so a slow or stuck client never holds up anybody else's scrape.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import html
import json
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import gzip_accepted

from celery_prom.config import Ports
from celery_prom.webconfig import BasicAuth, WebConfig, WebConfigFile

logger = logging.getLogger(__name__)

#: Seconds a client may take to send its request; a stuck one only blocks its own thread.
CLIENT_TIMEOUT = 30.0
#: Pause after a failed accept (such as running out of descriptors) before the next one.
ACCEPT_RETRY_DELAY = 0.1
#: Compression level 1, where prometheus_client compresses at gzip's default of 9: on the
#: 20,000 task series of benchmarks/exporter_scrape.py, level 9 takes 3.1 s against 0.2 s for
#: a body only 30 % smaller (docs/benchmarks.md).
GZIP_LEVEL = 1


_NO_WEB_CONFIG = WebConfig()


class PortInUse(OSError):
    """The port is taken by another process; the message names host and port."""


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    checks: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """What a server serves: the metrics body, the health report and any further pages, all
    built per request.

    ``render_metrics`` takes the scraper's ``Accept`` header and returns the body and its
    content type; each of ``pages`` (by path) returns its body and content type.
    """

    title: str
    render_metrics: Callable[[str], tuple[bytes, str]]
    check_health: Callable[[], HealthReport]
    pages: Mapping[str, Callable[[], tuple[bytes, str]]] = field(default_factory=dict)


class MetricsServer:
    """Binds at construction (so a busy port fails early), serves once started.

    With a web-config file, connections are TLS and/or requests need basic auth.
    """

    def __init__(
        self, host: str, port: int, endpoint: Endpoint, web_config: WebConfigFile | None = None
    ) -> None:
        try:
            self._httpd = _Server((host, port), _Handler, endpoint, web_config)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(exc.errno, f"port {port} on {host} is already in use") from None
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._accept_connections, name="celery-prom-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            with contextlib.suppress(OSError):
                # Wakes the blocked accept() at once.
                self._httpd.socket.shutdown(socket.SHUT_RDWR)
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def _accept_connections(self) -> None:
        # A blocking accept rather than socketserver's polling loop: an idle endpoint then
        # costs the worker nothing (a poll would take the GIL from it several times a second).
        httpd = self._httpd
        failing = False
        while not self._stopping.is_set():
            try:
                connection, address = httpd.get_request()
            except OSError as exc:
                if not self._stopping.is_set():
                    # Once per streak: out of descriptors, it would fail ten times a second.
                    log = logger.debug if failing else logger.warning
                    log("celery-prom: cannot accept connections: %s", exc)
                    failing = True
                    self._stopping.wait(ACCEPT_RETRY_DELAY)
                continue
            failing = False
            httpd.process_request(connection, address)  # in a thread of its own

    def close_socket(self) -> None:
        """Close the listening socket without serving (a forked child's inherited copy)."""
        self._httpd.socket.close()


def serve_first_free(
    host: str, ports: Ports, endpoint: Endpoint, web_config: WebConfigFile | None = None
) -> MetricsServer:
    """A server on the first port of ``ports`` that is free.

    Raises ``PortInUse`` when none is (naming the range, when it has several ports), or
    ``OSError`` when ``host`` cannot be listened on.
    """
    for port in ports:
        try:
            return MetricsServer(host, port, endpoint, web_config)
        except PortInUse:
            if ports.first == ports.last:
                raise
    raise PortInUse(errno.EADDRINUSE, f"every port of {ports} on {host} is already in use")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        endpoint: Endpoint,
        web_config: WebConfigFile | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.endpoint = endpoint
        self.web_config = web_config
        self.auth = BasicAuth()
        super().__init__(address, handler)

    def config(self) -> WebConfig:
        return self.web_config.current() if self.web_config is not None else _NO_WEB_CONFIG

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        context = self.config().ssl_context
        if context is not None:
            # The handshake happens in the connection's own thread (see _Handler.setup), so a
            # slow or silent client never holds up the accept loop.
            connection = context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-request are routine for a scrape endpoint, not errors.
        logger.debug("celery-prom: request from %s failed", client_address, exc_info=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can block on DNS for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def do_POST(self) -> None:
        self._method_not_allowed()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_POST

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)

    def _respond(self, send_body: bool) -> None:
        config = self.server.config()
        if not self.server.auth.allows(config, self.headers.get("Authorization")):
            self._send(
                HTTPStatus.UNAUTHORIZED,
                "text/plain",
                b"unauthorized\n",
                send_body=send_body,
                config=config,
                extra_headers={"WWW-Authenticate": 'Basic realm="celery-prom"'},
            )
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, content_type, body = self._metrics()
        elif path == "/health":
            status, content_type, body = self._health()
        elif path == "/":
            status, content_type, body = self._landing_page()
        elif path in self.server.endpoint.pages:
            status, content_type, body = self._page(path)
        else:
            status, content_type, body = HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"
        self._send(status, content_type, body, send_body=send_body, config=config)

    def _metrics(self) -> tuple[HTTPStatus, str, bytes]:
        accept = self.headers.get("Accept", "")
        return self._rendered("metrics", lambda: self.server.endpoint.render_metrics(accept))

    def _page(self, path: str) -> tuple[HTTPStatus, str, bytes]:
        return self._rendered(path, self.server.endpoint.pages[path])

    def _rendered(
        self, what: str, render: Callable[[], tuple[bytes, str]]
    ) -> tuple[HTTPStatus, str, bytes]:
        try:
            body, content_type = render()
        except Exception:  # a client gets an answer, never a dropped connection
            logger.exception("celery-prom: rendering %s failed", what)
            return HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", f"{what} unavailable\n".encode()
        return HTTPStatus.OK, content_type, body

    def _health(self) -> tuple[HTTPStatus, str, bytes]:
        try:
            report = self.server.endpoint.check_health()
        except Exception as exc:  # an unhealthy answer is still an answer
            logger.exception("celery-prom: health check failed")
            report = HealthReport(False, {"error": type(exc).__name__})
        status = HTTPStatus.OK if report.healthy else HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps(
            {"healthy": report.healthy, "checks": dict(report.checks)}, sort_keys=True
        )
        return status, "application/json", body.encode("utf-8") + b"\n"

    def _landing_page(self) -> tuple[HTTPStatus, str, bytes]:
        title = html.escape(self.server.endpoint.title)
        links = "".join(
            f'<li><a href="{path}">{path}</a></li>'
            for path in ("/metrics", "/health", *self.server.endpoint.pages)
        )
        page = (
            f"<!doctype html><html><head><title>{title}</title></head><body>"
            f"<h1>{title}</h1><ul>{links}</ul></body></html>\n"
        )
        return HTTPStatus.OK, "text/html; charset=utf-8", page.encode("utf-8")

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # the request body, if any, is never read
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "text/plain",
            b"",
            send_body=True,
            config=self.server.config(),
            extra_headers={"Allow": "GET, HEAD"},
        )

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes,
        *,
        send_body: bool,
        config: WebConfig,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        if len(body) > 1024 and gzip_accepted(self.headers.get("Accept-Encoding", "")):
            # mtime=0: from Python 3.11 one pass over the body, zlib writing the gzip header
            # and checksum itself (with a timestamp, gzip reads the body again for the checksum).
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            encoding: str | None = "gzip"
        else:
            encoding = None
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for name, value in {**config.headers, **(extra_headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)
