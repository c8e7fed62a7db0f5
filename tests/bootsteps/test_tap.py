"""The event tap, end to end: real workers of every pool, real brokers, scraped over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import pytest

import celery_prom
from tests.support import Broker, Scrape, WorkerProcess, running_worker

T = "cptest_tasks."


@dataclass(frozen=True)
class Expected:
    """Exact counters one task name must show once the mix has run."""

    received: int
    started: int
    succeeded: int = 0
    retried: int = 0
    failures: tuple[tuple[str, int], ...] = ()


#: 20 successes, 5 failures of two classes, 2 tasks that fail twice and retry to success.
MIX_EXPECTED = {
    f"{T}noop": Expected(received=20, started=20, succeeded=20),
    f"{T}fail": Expected(
        received=5, started=5, failures=(("ValueError", 3), ("PaymentDeclined", 2))
    ),
    f"{T}flaky": Expected(received=6, started=6, succeeded=2, retried=4),
}


def send_mix(app: Any) -> None:
    for _ in range(20):
        app.send_task(f"{T}noop")
    for exception in ["ValueError"] * 3 + ["PaymentDeclined"] * 2:
        app.send_task(f"{T}fail", args=[exception])
    for _ in range(2):
        app.send_task(f"{T}flaky", args=[2])


def outcomes(scrape: Scrape, worker: WorkerProcess) -> float:
    host = {"hostname": worker.hostname}
    return (
        scrape.total("celery_task_succeeded_total", **host)
        + scrape.total("celery_task_failed_total", **host)
        + scrape.total("celery_task_retried_total", **host)
    )


def assert_counts(scrape: Scrape, worker: WorkerProcess, expected: dict[str, Expected]) -> None:
    for name, want in expected.items():
        labels = {"name": name, "hostname": worker.hostname, "queue_name": worker.queue}
        got = {
            "received": scrape.value("celery_task_received_total", **labels),
            "started": scrape.value("celery_task_started_total", **labels),
            "succeeded": scrape.value("celery_task_succeeded_total", **labels),
            "retried": scrape.value("celery_task_retried_total", **labels),
            "revoked": scrape.value("celery_task_revoked_total", **labels),
            "rejected": scrape.value("celery_task_rejected_total", **labels),
            "runtime observations": scrape.value("celery_task_runtime_seconds_count", **labels),
            "queue-wait observations": scrape.value(
                "celery_task_queue_wait_seconds_count", **labels
            ),
            "failures": scrape.by_label("celery_task_failed_total", "exception", **labels),
        }
        assert got == {
            "received": want.received,
            "started": want.started,
            "succeeded": want.succeeded,
            "retried": want.retried,
            "revoked": 0,
            "rejected": 0,
            "runtime observations": want.succeeded,
            "queue-wait observations": want.started,
            "failures": dict(want.failures),
        }, name


def run_mix(worker: WorkerProcess, app: Any) -> Scrape:
    send_mix(app)
    total = sum(
        e.succeeded + e.retried + sum(n for _, n in e.failures) for e in MIX_EXPECTED.values()
    )
    scrape = worker.wait_for_scrape(
        lambda s: outcomes(s, worker) >= total, what=f"{total} outcomes"
    )
    worker.wait_for_scrape(
        lambda s: s.value("celery_worker_tasks_active", hostname=worker.hostname) == 0,
        what="no active tasks",
    )
    return scrape


POOLS = [
    pytest.param("prefork", 2, id="prefork-c2"),
    pytest.param("prefork", 4, id="prefork-c4"),
    pytest.param("threads", 4, id="threads"),
    pytest.param("solo", 1, id="solo"),
    pytest.param("gevent", 10, id="gevent"),
]


@pytest.mark.parametrize(("pool", "concurrency"), POOLS)
def test_mix_is_counted_exactly_on_redis(
    redis_broker: Broker,
    tmp_path: Path,
    client_app_for: Callable[..., Any],
    pool: str,
    concurrency: int,
) -> None:
    with running_worker(redis_broker, tmp_path, pool=pool, concurrency=concurrency) as worker:
        scrape = run_mix(worker, client_app_for(redis_broker, worker.queue))
        assert_counts(scrape, worker, MIX_EXPECTED)
        assert (
            scrape.value(
                "celery_worker_info",
                hostname=worker.hostname,
                pool=pool,
                celery_version=celery.__version__,
                celery_prom_version=celery_prom.__version__,
            )
            == 1
        )
        assert scrape.value("celery_worker_pool_processes", hostname=worker.hostname) == concurrency


@pytest.mark.slow
@pytest.mark.parametrize(("pool", "concurrency"), [POOLS[0], POOLS[2]])
def test_mix_is_counted_exactly_on_rabbitmq(
    amqp_broker: Broker,
    tmp_path: Path,
    client_app_for: Callable[..., Any],
    pool: str,
    concurrency: int,
) -> None:
    with running_worker(amqp_broker, tmp_path, pool=pool, concurrency=concurrency) as worker:
        scrape = run_mix(worker, client_app_for(amqp_broker, worker.queue))
        assert_counts(scrape, worker, MIX_EXPECTED)
