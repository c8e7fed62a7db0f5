"""Helpers for exporter tests: the exporter as a subprocess, raw events, workers sending events."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import redis
from kombu import Connection, Exchange, Producer

from tests.support import (
    APPS,
    REPO,
    Broker,
    Scrape,
    ServingProcess,
    WorkerProcess,
    exporter_command,
    free_port,
    http_get,
    start_worker,
    try_scrape,
    unique,
    wait_for,
)


class ExporterProcess(ServingProcess):
    """A ``celery-prom exporter`` (or ``celery prom``) subprocess."""

    @property
    def title(self) -> str:
        return "the exporter"

    def scrape(self) -> Scrape | None:
        self.assert_alive()
        return try_scrape(self.port)

    def wait_until_counting(self, worker: WorkerProcess) -> None:
        """Until it has heard the worker's heartbeat, so it receives the worker's task events,
        and learned the worker's queue from its active_queues, which labels its tasks."""
        self.wait_for_scrape(
            lambda s: s.value("celery_worker_up", hostname=worker.hostname) == 1,
            what=f"{worker.name}'s heartbeat",
        )
        self.wait_for_scrape(
            lambda s: s.value("celery_queue_length", queue_name=worker.queue) is not None,
            what=f"{worker.name}'s queue",
        )

    def workers(self) -> list[dict[str, Any]]:
        """The target groups of ``/sd/workers``."""
        self.assert_alive()
        groups: list[dict[str, Any]] = json.loads(
            http_get(f"http://127.0.0.1:{self.port}/sd/workers")
        )
        return groups

    def wait_for_workers(
        self, probe: Callable[[list[dict[str, Any]]], bool], what: str
    ) -> list[dict[str, Any]]:
        """``/sd/workers`` once ``probe`` accepts it (an empty list too)."""

        def accepted() -> tuple[list[dict[str, Any]]] | None:
            groups = self.workers()
            return (groups,) if probe(groups) else None

        return wait_for(accepted, what=what)[0]

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            return 200, json.loads(http_get(f"http://127.0.0.1:{self.port}/health"))
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode())


def exporter_env(broker: Broker | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_PROM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(REPO), env.get("PYTHONPATH", "")])
    if broker is not None:
        env.update(
            CPTEST_BROKER_URL=broker.url,
            CPTEST_TRANSPORT_OPTIONS=json.dumps(broker.transport_options),
        )
    env.update(extra)
    return env


def transport_args(options: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        args += ["--broker-transport-option", f"{key}={json.dumps(value)}"]
    return args


@contextlib.contextmanager
def running_exporter(
    broker_url: str,
    tmp_path: Path,
    *args: str,
    transport_options: Mapping[str, Any] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Iterator[ExporterProcess]:
    port = free_port()
    command = exporter_command(broker_url, port, *transport_args(transport_options or {}), *args)
    with serving(command, port, tmp_path, env or exporter_env(), wait) as exporter:
        yield exporter


@contextlib.contextmanager
def running_celery_prom(
    tmp_path: Path, env: dict[str, str], *args: str
) -> Iterator[ExporterProcess]:
    """``celery -A cptest_tasks prom``: the exporter of the test app ``env`` configures."""
    port = free_port()
    command = [sys.executable, "-m", "celery", "-A", "cptest_tasks", "prom"]
    with serving(
        [*command, "--host", "127.0.0.1", "--port", str(port), *args], port, tmp_path, env
    ) as exporter:
        yield exporter


@contextlib.contextmanager
def serving(
    command: list[str], port: int, tmp_path: Path, env: dict[str, str], wait: bool = True
) -> Iterator[ExporterProcess]:
    """An exporter run by ``command``, serving on ``port``, stopped on the way out."""
    log = tmp_path / f"exporter-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    exporter = ExporterProcess(port, process, log)
    try:
        if wait:
            exporter.wait_for_scrape(lambda s: True, what="the endpoint to answer")
        yield exporter
    finally:
        exporter.stop()


def assert_down_while_frozen(
    exporter: ExporterProcess, broker: subprocess.Popen[bytes], queue: str, length: int
) -> None:
    """Freezes the broker process (SIGSTOP, its connections left open): a scrape reports it
    down within the broker timeout, without a stale length of ``queue``; thawed, the broker
    is back, ``queue`` holding ``length`` messages."""
    broker.send_signal(signal.SIGSTOP)
    try:
        frozen = exporter.scrape()
        assert frozen is not None
        assert frozen.value("celery_prom_broker_up") == 0
        assert frozen.value("celery_prom_collector_success", collector="queues") == 0
        assert frozen.value("celery_queue_length", queue_name=queue) is None
        assert exporter.health()[0] == 503
    finally:
        broker.send_signal(signal.SIGCONT)
    exporter.wait_for_scrape(
        lambda s: (
            s.value("celery_prom_broker_up") == 1
            and s.value("celery_queue_length", queue_name=queue) == length
        ),
        what="the broker back",
    )


def running_exporter_for(broker: Broker, tmp_path: Path, *args: str) -> Any:
    return running_exporter(broker.url, tmp_path, *args, transport_options=broker.transport_options)


# -- events, published raw -------------------------------------------------------------------


def event(type_: str, hostname: str, clock: int, timestamp: float, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "hostname": hostname,
        "clock": clock,
        "timestamp": timestamp,
        "utcoffset": 0,
        "pid": 1,
        **fields,
    }


def kombu_envelope(
    body: bytes, content_type: str = "application/json", routing_key: str = "task.received"
) -> bytes:
    """A message as kombu's Redis transport publishes it (body base64-encoded)."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {},
            "properties": {
                "delivery_mode": 1,
                "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


class RawEvents:
    """Publishes event payloads exactly as given, to the exporter's event exchange."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._connection = Connection(broker.url, transport_options=broker.transport_options)
        self._redis: redis.Redis | None = None
        if broker.kind == "redis":
            channel = self._connection.default_channel
            self._topic = channel.global_keyprefix + channel._get_publish_topic(
                "celeryev", "task.received"
            )
            self._redis = redis.Redis.from_url(broker.url)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        self._connection.release()

    def events(self, events: list[Any]) -> None:
        for item in events:
            self.body(json.dumps(item).encode())

    def body(self, body: bytes, content_type: str = "application/json") -> None:
        """A message body with its content type (wrapped in kombu's envelope on Redis)."""
        if self._redis is not None:
            self.payload(kombu_envelope(body, content_type))
            return
        producer = Producer(self._connection.default_channel)
        producer.publish(
            body,
            exchange=Exchange("celeryev", type="topic"),
            routing_key="task.received",
            content_type=content_type,
            content_encoding="binary",
            declare=[],
        )

    def payload(self, payload: bytes) -> None:
        """A raw Redis PUB/SUB payload (Redis only)."""
        assert self._redis is not None
        self._redis.publish(self._topic, payload)


def hostname() -> str:
    return unique("fake") + "@test"


# -- workers that send task events -----------------------------------------------------------


@contextlib.contextmanager
def plain_worker(
    broker: Broker, tmp_path: Path, *args: str, install: bool = False
) -> Iterator[WorkerProcess]:
    """A worker of the test app sending task events (``-E``), with or without the bootstep.

    Prefork runs an event loop, so its task events travel in ``task.multi`` batches.
    """
    worker = start_worker(
        broker,
        tmp_path,
        extra_args=("-E", *args),
        env={"CPTEST_INSTRUMENTATION": "install" if install else "none"},
        wait=install,  # the endpoint, then ready; without the bootstep there is no endpoint
    )
    try:
        wait_for(worker.is_ready, what=f"{worker.name} to be ready")
        yield worker
    finally:
        worker.stop()
