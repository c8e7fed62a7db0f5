"""The exporter end to end: real workers sending task events, real brokers, real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bootsteps.test_tap import MIX_EXPECTED, T, outcomes, send_mix
from tests.exporter_process import plain_worker, running_exporter_for
from tests.support import Broker, Scrape, WorkerProcess, scrape


def worker_is_up(worker: WorkerProcess) -> Callable[[Scrape], bool]:
    return lambda s: s.value("celery_worker_up", hostname=worker.hostname) == 1


@pytest.mark.slow
def test_task_events_are_counted_exactly(
    broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with plain_worker(broker, tmp_path) as worker, running_exporter_for(
        broker, tmp_path
    ) as exporter:
        exporter.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat")
        # The worker's queue, learned from its active_queues, also labels its tasks.
        exporter.wait_for_scrape(
            lambda s: s.value("celery_queue_length", queue_name=worker.queue) is not None,
            what="the worker's queue",
        )
        send_mix(client_app_for(broker, worker.queue))
        total = sum(e.succeeded + e.retried + sum(n for _, n in e.failures)
                    for e in MIX_EXPECTED.values())
        result = exporter.wait_for_scrape(lambda s: outcomes(s, worker) >= total,
                                          what=f"{total} outcomes")
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


@pytest.mark.slow
def test_an_instrumented_worker_is_not_counted_twice(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with plain_worker(redis_broker, tmp_path, install=True) as worker, running_exporter_for(
        redis_broker, tmp_path
    ) as exporter:
        exporter.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat")
        app = client_app_for(redis_broker, worker.queue)
        for _ in range(5):
            app.send_task(f"{T}noop")
        # received, started and succeeded for each task: all counted by the worker itself.
        result = exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_events_dropped_total",
                              reason="recorded_by_worker") == 15,
            what="15 task events skipped",
        )
        assert result.total("celery_task_received_total", hostname=worker.hostname) == 0
        own = scrape(_worker_port(worker))
        assert own.value("celery_task_succeeded_total", name=f"{T}noop",
                         hostname=worker.hostname, queue_name=worker.queue) == 5


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
            "failures": {
                dict(series)["exception"]: value
                for series, value in result.series("celery_task_failed_total").items()
                if set(labels.items()) <= series
            },
        }
    return counts


def _worker_port(worker: WorkerProcess) -> int:
    command = worker.process.args
    assert isinstance(command, list)
    return int(command[command.index("--prom-port") + 1])
