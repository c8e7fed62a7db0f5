"""The event receiver: reconnecting after broker faults, with backoff, for as long as it runs."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from celery_prom.exporter.broker import BrokerStatus
from celery_prom.exporter.dropped import DroppedEvents
from celery_prom.exporter.liveness import WorkerLiveness
from celery_prom.exporter.losses import LossEstimator
from celery_prom.exporter.receiver import Backoff, EventReceiver
from celery_prom.recorder import Recorder
from celery_prom.store import TaskStore
from tests.exporter_process import RawEvents, event, hostname, running_exporter
from tests.support import Broker, Scrape, private_redis, unique


def task_events(hostname: str, first_clock: int, count: int) -> list[dict[str, Any]]:
    """received, started and succeeded events of ``count`` tasks, as a plain worker sends."""
    events = []
    clock = first_clock
    now = time.time()
    for _ in range(count):
        task_id = unique("t")
        for type_, fields in (
            ("task-received", {"name": "demo.add"}),
            ("task-started", {}),
            ("task-succeeded", {"runtime": 0.01}),
        ):
            events.append(event(type_, hostname, clock, now, uuid=task_id, **fields))
            clock += 1
    return events


def succeeded(result: Scrape, host: str) -> float | None:
    return result.value(
        "celery_task_succeeded_total", name="demo.add", hostname=host, queue_name="celery"
    )


@pytest.mark.slow
def test_reconnects_after_the_broker_restarts_and_counters_never_go_back(
    tmp_path: Path,
) -> None:
    host = hostname()
    seen: list[float] = []

    def counted(expected: int) -> Callable[[Scrape], bool]:
        def probe(result: Scrape) -> bool:
            seen.append(succeeded(result, host) or 0)
            return seen[-1] == expected

        return probe

    with private_redis(tmp_path) as server, running_exporter(server.url, tmp_path) as exporter:
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        raw = RawEvents(Broker(server.url))
        raw.events(task_events(host, 1, 3))
        exporter.wait_for_scrape(counted(3), what="3 tasks")
        raw.close()
        for restart in (1, 2):
            server.stop()
            down = exporter.wait_for_scrape(
                lambda s: s.value("celery_prom_broker_up") == 0, what="broker_up 0"
            )
            seen.append(succeeded(down, host) or 0)
            assert exporter.health()[0] == 503
            server.start()
            exporter.wait_for_scrape(
                lambda s, n=restart: (
                    s.value("celery_prom_broker_reconnects_total") == n
                    and s.value("celery_prom_broker_up") == 1
                ),
                what=f"reconnect {restart}",
            )
            raw = RawEvents(Broker(server.url))
            raw.events(task_events(host, 100 * restart, 1))
            exporter.wait_for_scrape(counted(3 + restart), what=f"{3 + restart} tasks")
            raw.close()
        assert seen == sorted(seen)
        assert "Traceback" not in exporter.output()
        exporter.assert_alive()


@pytest.mark.slow
def test_reconnects_when_rabbitmq_closes_its_connections(
    amqp_broker: Broker, tmp_path: Path
) -> None:
    name = unique("celery-prom-test")
    host = hostname()
    with running_exporter(
        amqp_broker.url,
        tmp_path,
        transport_options={"client_properties": {"connection_name": name}},
    ) as exporter:
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        raw = RawEvents(amqp_broker)
        raw.events(task_events(host, 1, 2))
        exporter.wait_for_scrape(lambda s: succeeded(s, host) == 2, what="2 tasks")
        assert close_rabbitmq_connections(name) >= 1
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_reconnects_total") == 1, what="a reconnect"
        )
        raw.events(task_events(host, 10, 1))
        exporter.wait_for_scrape(lambda s: succeeded(s, host) == 3, what="3 tasks")
        raw.close()


def close_rabbitmq_connections(client_name: str) -> int:
    """Closes the RabbitMQ connections (only ours) whose client-provided name is given."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pids = [line.split("\t", 1)[0] for line in listed.stdout.splitlines() if client_name in line]
    closed = 0
    for pid in pids:
        # Short-lived connections (remote control) may be gone already.
        done = subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test"],
            check=False,
            capture_output=True,
            timeout=60,
        )
        closed += done.returncode == 0
    return closed


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first=0.5, cap=4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(7)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == 7
    backoff.reset()
    assert backoff.next_delay() <= 0.5


class FlakyStream:
    """Fails to connect twice (broker down, then options rejected), then delivers and
    breaks; the third connection stops it."""

    errors = (ConnectionError,)
    attempts = 0

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop

    def connect(self) -> None:
        FlakyStream.attempts += 1
        if FlakyStream.attempts == 1:
            raise ConnectionError("refused by redis://:pw@h/0")
        if FlakyStream.attempts == 2:
            raise TypeError("unexpected keyword argument 'bogus'")  # a bad transport option

    def pump(self, stopped: Any) -> None:
        if FlakyStream.attempts == 3:
            raise ConnectionError("reset")
        self._stop()

    def close(self) -> None:
        pass


def test_the_receiver_retries_until_stopped_and_counts_reconnects() -> None:
    status = BrokerStatus()
    liveness = WorkerLiveness(30, 600)
    receiver: EventReceiver

    def new_stream() -> FlakyStream:
        return FlakyStream(receiver.stop)

    receiver = EventReceiver(
        new_stream,
        status,
        liveness,
        LossEstimator(DroppedEvents(Recorder(TaskStore()))),
        safe_url="redis://:**@h/0",
        backoff=Backoff(first=0.001, cap=0.002),
    )
    FlakyStream.attempts = 0
    receiver.run()
    assert FlakyStream.attempts == 4
    assert sample_of(status, "celery_prom_broker_reconnects_total") == 1


def sample_of(collector: Any, name: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry.get_sample_value(name)
