"""The exporter end to end: real workers sending task events, real brokers, real HTTP."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily

from celery_prom.broker import BrokerStatus
from celery_prom.events import LossEstimator
from celery_prom.exporter import Backoff, EventReceiver, TimedCollectors
from celery_prom.recorder import Recorder
from celery_prom.store import TaskStore
from celery_prom.workers import WorkerLiveness
from tests.bootsteps.test_tap import MIX_EXPECTED, T, outcomes, send_mix
from tests.exporter_process import (
    RawEvents,
    event,
    hostname,
    kombu_envelope,
    plain_worker,
    running_exporter,
    running_exporter_for,
)
from tests.support import (
    Broker,
    Scrape,
    WorkerProcess,
    http_get,
    private_redis,
    promtool_check_metrics,
    unique,
)


def worker_is_up(worker: WorkerProcess) -> Callable[[Scrape], bool]:
    return lambda s: s.value("celery_worker_up", hostname=worker.hostname) == 1


@pytest.mark.slow
def test_task_events_are_counted_exactly(
    own_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    broker = own_broker
    with (
        plain_worker(broker, tmp_path) as worker,
        running_exporter_for(broker, tmp_path) as exporter,
    ):
        exporter.wait_until_counting(worker)
        send_mix(client_app_for(broker, worker.queue))
        total = sum(
            e.succeeded + e.retried + sum(n for _, n in e.failures) for e in MIX_EXPECTED.values()
        )
        result = exporter.wait_for_scrape(
            lambda s: outcomes(s, worker) >= total, what=f"{total} outcomes"
        )
        assert task_counts(result, worker) == {
            name: {
                "received": want.received,
                "started": want.started,
                "succeeded": want.succeeded,
                "retried": want.retried,
                "runtime observations": want.succeeded,
                "failures": dict(want.failures),
            }
            for name, want in MIX_EXPECTED.items()
        }
        assert result.value("celery_queue_length", queue_name=worker.queue) == 0
        if broker.kind == "amqp":
            assert result.value("celery_active_consumer_count", queue_name=worker.queue) == 1
        assert result.value("celery_prom_broker_up") == 1
        assert result.series("celery_prom_events_dropped_total") == {}
        assert result.value("celery_prom_collector_success", collector="queues") == 1
        # The catalogue keeps the most used exporter's name for RabbitMQ's consumer count,
        # which promtool's lint dislikes; it is the only finding.
        consumer_count_name = (
            "celery_active_consumer_count non-histogram and non-summary metrics should not have"
            ' "_count" suffix'
        )
        expected_lint = [consumer_count_name] if broker.kind == "amqp" else []
        assert promtool_check_metrics(result.text) == expected_lint


@pytest.mark.slow
def test_an_instrumented_worker_is_not_counted_twice(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    redis_broker = own_redis_broker
    with (
        plain_worker(redis_broker, tmp_path, install=True) as worker,
        running_exporter_for(redis_broker, tmp_path) as exporter,
    ):
        exporter.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat")
        app = client_app_for(redis_broker, worker.queue)
        for _ in range(5):
            app.send_task(f"{T}noop")
        # received, started and succeeded for each task: all counted by the worker itself.
        result = exporter.wait_for_scrape(
            lambda s: (
                s.value("celery_prom_events_dropped_total", reason="recorded_by_worker") == 15
            ),
            what="15 task events skipped",
        )
        assert result.total("celery_task_received_total", hostname=worker.hostname) == 0
        own = worker.scrape()
        assert (
            own.value(
                "celery_task_succeeded_total",
                name=f"{T}noop",
                hostname=worker.hostname,
                queue_name=worker.queue,
            )
            == 5
        )


def task_counts(result: Scrape, worker: WorkerProcess) -> dict[str, dict[str, object]]:
    counts: dict[str, dict[str, object]] = {}
    for name in MIX_EXPECTED:
        labels = {"name": name, "hostname": worker.hostname, "queue_name": worker.queue}
        counts[name] = {
            "received": result.value("celery_task_received_total", **labels),
            "started": result.value("celery_task_started_total", **labels),
            "succeeded": result.value("celery_task_succeeded_total", **labels),
            "retried": result.value("celery_task_retried_total", **labels),
            "runtime observations": result.value("celery_task_runtime_seconds_count", **labels),
            "failures": result.by_label("celery_task_failed_total", "exception", **labels),
        }
    return counts


# -- broker faults -------------------------------------------------------------------------


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
def test_serves_at_once_without_a_broker_and_connects_when_it_appears(tmp_path: Path) -> None:
    with (
        private_redis(tmp_path, start=False) as server,
        running_exporter(server.url, tmp_path) as exporter,
    ):
        first = exporter.scrape()
        assert first is not None
        assert first.value("celery_prom_broker_up") == 0
        assert exporter.health()[0] == 503
        assert "<h1>celery-prom exporter</h1>" in http_get(f"http://127.0.0.1:{exporter.port}/")
        server.start()
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        host = hostname()
        raw = RawEvents(Broker(server.url))
        raw.events(task_events(host, 1, 2))
        result = exporter.wait_for_scrape(lambda s: succeeded(s, host) == 2, what="2 tasks")
        assert result.value("celery_prom_broker_reconnects_total") == 0
        assert exporter.health() == (
            200,
            {
                "healthy": True,
                "checks": {"broker": "up", "broker_url": server.url, "metrics": "ok"},
            },
        )
        raw.close()


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


@pytest.mark.slow
def test_a_lagging_subscriber_cut_off_by_redis_reconnects_and_counts_the_loss(
    tmp_path: Path,
) -> None:
    """Redis closes a subscriber whose output buffer passes the pubsub limit. Freezing the
    exporter while a burst is published makes it lag for sure; every event sent is then
    either received or counted as lost (from the sender's clock), exactly."""
    host = hostname()
    burst, after = 20_000, 10
    with (
        private_redis(tmp_path, "--client-output-buffer-limit", "pubsub 256kb 128kb 1") as server,
        running_exporter(server.url, tmp_path) as exporter,
    ):
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        raw = RawEvents(Broker(server.url))
        now = time.time()
        exporter.process.send_signal(signal.SIGSTOP)
        try:
            pipe = server.client().pipeline(transaction=False)
            for clock in range(1, burst + 1):
                payload = kombu_envelope(
                    json.dumps(
                        event("worker-heartbeat", host, clock, now, active=0, processed=0)
                    ).encode()
                )
                pipe.publish(raw._topic, payload)
            pipe.execute()
        finally:
            exporter.process.send_signal(signal.SIGCONT)
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_reconnects_total") == 1, what="a reconnect"
        )
        raw.events(
            [
                event("worker-heartbeat", host, clock, now, active=0, processed=0)
                for clock in range(burst + 1, burst + after + 1)
            ]
        )
        result = exporter.wait_for_scrape(
            lambda s: (
                (s.value("celery_prom_events_received_total") or 0)
                + (s.value("celery_prom_events_dropped_total", reason="lost") or 0)
                == burst + after
            ),
            what="every event received or counted as lost",
        )
        assert (result.value("celery_prom_events_dropped_total", reason="lost") or 0) > 0
        raw.close()


# -- the receiver loop and collectors, in isolation ------------------------------------------


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
    recorder = Recorder(TaskStore())
    liveness = WorkerLiveness(30, 600, on_purge=lambda host: None)
    receiver: EventReceiver

    def new_stream() -> FlakyStream:
        return FlakyStream(receiver.stop)

    receiver = EventReceiver(
        new_stream,
        status,
        liveness,
        LossEstimator(recorder),
        safe_url="redis://:**@h/0",
        backoff=Backoff(first=0.001, cap=0.002),
    )
    FlakyStream.attempts = 0
    receiver.run()
    assert FlakyStream.attempts == 4
    assert sample_of(status, "celery_prom_broker_reconnects_total") == 1


class Broken:
    def collect(self) -> Any:
        raise RuntimeError("no")


class Fine:
    def collect(self) -> Any:
        gauge = GaugeMetricFamily("demo_value", "A value.")
        gauge.add_metric((), 3)
        yield gauge


def test_a_failing_collector_reports_itself_and_the_others_still_serve() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TimedCollectors({"broken": Broken(), "fine": Fine()}))
    assert registry.get_sample_value("demo_value") == 3
    assert registry.get_sample_value("celery_prom_collector_success", {"collector": "broken"}) == 0
    assert registry.get_sample_value("celery_prom_collector_success", {"collector": "fine"}) == 1
    assert (
        registry.get_sample_value("celery_prom_collector_duration_seconds", {"collector": "fine"})
        is not None
    )


def sample_of(collector: Any, name: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry.get_sample_value(name)


@pytest.mark.slow
def test_a_killed_worker_is_down_after_the_exporters_worker_timeout(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    # When exactly silence turns into down is test_workers.py's, with a fake clock. Here: the
    # option reaches the exporter (down well before the default 30 s) and silence is enough.
    with (
        plain_worker(own_redis_broker, tmp_path) as worker,
        running_exporter_for(own_redis_broker, tmp_path, "--worker-timeout", "5") as exporter,
    ):
        exporter.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat")
        worker.process.send_signal(signal.SIGKILL)  # no worker-offline event: just silence
        down = exporter.wait_for_scrape(
            lambda s: s.value("celery_worker_up", hostname=worker.hostname) == 0,
            timeout=20,
            what="the killed worker to be down",
        )

    host = {"hostname": worker.hostname}
    # Down, not forgotten: its last heartbeat is still shown, its task gauge is gone.
    assert down.value("celery_worker_last_heartbeat_timestamp_seconds", **host) is not None
    assert down.value("celery_worker_tasks_active", **host) is None


@pytest.mark.slow
def test_a_restarted_exporter_picks_up_running_workers(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with plain_worker(own_redis_broker, tmp_path) as worker:
        app = client_app_for(own_redis_broker, worker.queue)
        with running_exporter_for(own_redis_broker, tmp_path) as first:
            first.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat")
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        with running_exporter_for(own_redis_broker, tmp_path) as second:
            second.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat again")
            # Its queue, learned from its active_queues, also labels its tasks.
            second.wait_for_scrape(
                lambda s: s.value("celery_queue_length", queue_name=worker.queue) is not None,
                what="the worker's queue",
            )
            for _ in range(4):
                app.send_task(f"{T}noop")
            result = second.wait_for_scrape(
                lambda s: s.total("celery_task_succeeded_total", hostname=worker.hostname) >= 4,
                what="the tasks sent after the restart",
            )
        worker.assert_alive()

    labels = {"name": f"{T}noop", "hostname": worker.hostname, "queue_name": worker.queue}
    assert result.value("celery_task_received_total", **labels) == 4
    assert result.value("celery_task_succeeded_total", **labels) == 4
