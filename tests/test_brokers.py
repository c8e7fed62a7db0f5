"""Redis as production runs it (docs/brokers.md), each shape on a private server the test
starts: TLS with the server's certificate verified, Sentinel, an ACL user. On each, a worker
with the bootstep counts the known mix exactly, the exporter sees the worker and sizes the
queues, and the password shows nowhere."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.bootsteps.test_tap import MIX_EXPECTED, T, assert_counts, run_mix
from tests.certs import Pki, make_pki
from tests.exporter_process import (
    ExporterProcess,
    exporter_env,
    running_celery_prom,
    running_exporter,
)
from tests.support import Broker, RedisServer, private_redis, running_worker, started, unique

#: The broker password: it must not show in any log, page or error.
PASSWORD = unique("broker-password")
MASTER = "cptest-master"


class TlsRedisServer(RedisServer):
    """TLS only, on its port, with the server certificate of ``pki``; clients show none."""

    def __init__(self, directory: Path, pki: Pki, *extra_args: str) -> None:
        super().__init__(directory, *extra_args)
        self.pki = pki

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.pki.server_cert),
            "--tls-key-file",
            str(self.pki.server_key),
            "--tls-ca-cert-file",
            str(self.pki.ca),
            "--tls-auth-clients",
            "no",
        ]

    @property
    def url(self) -> str:
        return f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/0"


class SentinelServer(RedisServer):
    """A Sentinel watching ``master`` (named ``MASTER``), which it logs in to."""

    def __init__(self, directory: Path, master: RedisServer) -> None:
        super().__init__(directory)
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
            f"sentinel auth-pass {MASTER} {PASSWORD}\n"
        )

    def command(self) -> list[str]:
        program, *options = super().command()
        return [program, str(self.config), "--sentinel", *options]


@dataclass(frozen=True)
class Shape:
    """A broker as workers and producers reach it, and the exporter's options for it."""

    broker: Broker
    exporter_url: str
    exporter_args: tuple[str, ...] = ()


@contextlib.contextmanager
def tls_redis(tmp_path: Path) -> Iterator[Shape]:
    """The certificate settings in the URL's query for the worker, in options for the exporter."""
    pki = make_pki(tmp_path)
    with started(TlsRedisServer(tmp_path, pki, "--requirepass", PASSWORD)) as server:
        yield Shape(
            Broker(f"{server.url}?{urlencode(verifying(pki.ca))}"),
            server.url,
            ssl_options(verifying(pki.ca)),
        )


@contextlib.contextmanager
def sentinel_redis(tmp_path: Path) -> Iterator[Shape]:
    with (
        private_redis(tmp_path, "--requirepass", PASSWORD) as master,
        started(SentinelServer(tmp_path, master)) as sentinel,
    ):
        url = f"sentinel://:{PASSWORD}@127.0.0.1:{sentinel.port}/0"
        yield Shape(Broker(url, {"master_name": MASTER}), url)


@contextlib.contextmanager
def acl_redis(tmp_path: Path) -> Iterator[Shape]:
    """A user of its own with a password, and the default user switched off."""
    acl = f"--user default off --user cptest on >{PASSWORD} ~* &* +@all".split()
    with private_redis(tmp_path, *acl) as server:
        url = f"redis://cptest:{PASSWORD}@127.0.0.1:{server.port}/0"
        yield Shape(Broker(url), url)


SHAPES = {"tls": tls_redis, "sentinel": sentinel_redis, "acl": acl_redis}


def verifying(ca: Path) -> dict[str, str]:
    """The TLS settings that have the server's certificate verified against ``ca``."""
    return {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca)}


def ssl_options(settings: dict[str, str]) -> tuple[str, ...]:
    """The exporter's options giving it these TLS settings."""
    return tuple(
        arg for key, value in settings.items() for arg in ("--broker-ssl-option", f"{key}={value}")
    )


@pytest.mark.slow
@pytest.mark.parametrize("shape_of", SHAPES.values(), ids=SHAPES.keys())
def test_worker_counts_exporter_queues_and_liveness_and_the_password_nowhere(
    shape_of: Callable[[Path], contextlib.AbstractContextManager[Shape]],
    tmp_path: Path,
    client_app_for: Callable[..., Any],
) -> None:
    idle = unique("idle")
    with (
        shape_of(tmp_path) as shape,
        running_worker(shape.broker, tmp_path) as worker,
        running_exporter(
            shape.exporter_url,
            tmp_path,
            "-Q",
            idle,
            "--log-level",
            "DEBUG",
            *shape.exporter_args,
            transport_options=shape.broker.transport_options,
        ) as exporter,
    ):
        app = client_app_for(shape.broker, worker.queue)
        for _ in range(2):
            app.send_task(f"{T}noop", queue=idle)
        counted = run_mix(worker, app)
        assert_counts(counted, worker, MIX_EXPECTED)
        seen = exporter.wait_for_scrape(
            lambda s: (
                s.value("celery_worker_up", hostname=worker.hostname) == 1
                and s.by_label("celery_queue_length", "queue_name") == {idle: 2, worker.queue: 0}
            ),
            what="the worker up, 2 messages waiting and the worker's queue empty",
        )
        status, health = exporter.health()
        assert (status, health["checks"]["broker"]) == (200, "up")
    logs = [worker.output(), exporter.output()]  # both stopped, so complete
    assert all("**@127.0.0.1" in log for log in logs)  # the broker URL is logged, masked
    assert not [text for text in [*logs, counted.text, seen.text, str(health)] if PASSWORD in text]


@contextlib.contextmanager
def exporter_verifying_with(
    form: str, server: TlsRedisServer, ca: Path, tmp_path: Path
) -> Iterator[ExporterProcess]:
    """An exporter told to verify the server's certificate against ``ca``: in the URL, in
    options, or (``celery prom``) in the app's ``broker_use_ssl``."""
    verify = verifying(ca)
    if form == "url":
        with running_exporter(f"{server.url}?{urlencode(verify)}", tmp_path) as exporter:
            yield exporter
    elif form == "option":
        with running_exporter(server.url, tmp_path, *ssl_options(verify)) as exporter:
            yield exporter
    else:
        env = exporter_env(
            Broker(server.url),
            CPTEST_INSTRUMENTATION="none",
            CPTEST_CONF=json.dumps({"broker_use_ssl": verify}),
        )
        with running_celery_prom(tmp_path, env) as exporter:
            yield exporter


@pytest.mark.slow
@pytest.mark.parametrize("form", ["url", "option", "app"])
def test_the_brokers_certificate_is_verified(form: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with started(TlsRedisServer(tmp_path, pki, "--requirepass", PASSWORD)) as server:
        with exporter_verifying_with(form, server, pki.other_ca, tmp_path) as exporter:
            refused = exporter.wait_for_scrape(
                lambda s: "certificate verify failed" in str(exporter.health()[1]),
                what="the certificate refused",
            )
            assert refused.value("celery_prom_broker_up") == 0
        with exporter_verifying_with(form, server, pki.ca, tmp_path) as exporter:
            exporter.wait_for_scrape(
                lambda s: s.value("celery_prom_broker_up") == 1, what="the broker up"
            )
