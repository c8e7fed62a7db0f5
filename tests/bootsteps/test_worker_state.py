"""Worker gauges: pool names and sizes, invalid-message tallies, one collect() as scraped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import celery
import pytest
from celery.concurrency.gevent import TaskPool as GeventPool
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.worker import state as celery_state
from celery.worker.request import Request
from kombu.asynchronous.timer import Timer
from prometheus_client import CollectorRegistry

from celery_prom import __version__
from celery_prom.bootsteps.worker_state import (
    INVALID_TASK,
    INVALID_UNRECOGNIZED,
    MessageTally,
    WorkerStateCollector,
    longest_running,
    pool_name,
)
from tests.support import Broker, load_test_app, running_worker


class _Request:
    """Stands in for a task request in Celery's weak request sets."""

    def __init__(
        self, name: str = "proj.add", time_start: float | None = None, queue: str = "celery"
    ) -> None:
        self.name = name
        self.time_start = time_start
        self.delivery_info = {"routing_key": queue}


SCHEDULED = getattr(celery_state, "scheduled_requests", None)


class _CustomPool:
    limit = 3


@pytest.mark.parametrize(
    ("pool_class", "expected"),
    [
        (PreforkPool, "prefork"),
        (ThreadPool, "threads"),
        (SoloPool, "solo"),
        (GeventPool, "gevent"),
        (_CustomPool, "_CustomPool"),
    ],
)
def test_pool_name_is_what_users_pass_to_pool(pool_class: type, expected: str) -> None:
    assert pool_name(object.__new__(pool_class)) == expected


def test_pool_name_without_a_pool() -> None:
    assert pool_name(None) == "none"


def test_message_tally_counts_by_reason_in_order_from_many_threads() -> None:
    tally = MessageTally()

    def add_many(reason: str) -> None:
        for _ in range(1000):
            tally.add(reason)

    threads = [
        threading.Thread(target=add_many, args=(reason,))
        for reason in (INVALID_UNRECOGNIZED, INVALID_TASK, INVALID_UNRECOGNIZED)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert tally.items() == [(INVALID_TASK, 1000), (INVALID_UNRECOGNIZED, 2000)]


@pytest.fixture
def worker_with_requests() -> Iterator[SimpleNamespace]:
    """A worker (no pool) with two active requests, three reserved (the two active among
    them) and one waiting for its ETA, kept where the installed Celery keeps such requests."""
    now = time.time()
    held = [_Request(time_start=now - 30), _Request(time_start=now - 10), _Request(), _Request()]
    active, also_active, waiting, scheduled = held
    celery_state.active_requests.update((active, also_active))
    celery_state.reserved_requests.update((active, also_active, waiting))
    request_sets = [celery_state.active_requests, celery_state.reserved_requests]
    timer = Timer()  # kombu's, which a worker's timer schedules on
    timer.call_at(time.monotonic() + 3600, _ignore)  # not a request, as heartbeats are not
    if SCHEDULED is not None:
        SCHEDULED.add(scheduled)
        request_sets.append(SCHEDULED)
    else:  # Celery 5.3 to 5.6 keep it only in the worker's timer
        timer.call_at(time.monotonic() + 3600, _ignore, (Request.__new__(Request),))
    try:
        yield SimpleNamespace(pool=None, timer=timer)
    finally:
        for request_set in request_sets:
            for request in held:
                request_set.discard(request)


def _ignore(*args: Any) -> None:
    return None


def test_collect_reads_the_workers_state_at_scrape_time(worker_with_requests: Any) -> None:
    tally = MessageTally()
    tally.add(INVALID_TASK)
    registry = CollectorRegistry()
    registry.register(WorkerStateCollector(worker_with_requests, "w1@host", tally))
    host = {"hostname": "w1@host"}

    def value(name: str, labels: dict[str, str] = host) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("celery_worker_tasks_active") == 2
    assert value("celery_worker_tasks_reserved") == 2  # one waiting, one scheduled
    task = {**host, "name": "proj.add", "queue_name": "celery"}
    longest = value("celery_task_longest_running_seconds", task)
    assert longest is not None
    assert 30 <= longest < 40
    info = {**host, "celery_version": celery.__version__, "pool": "none"}
    assert value("celery_worker_info", {**info, "celery_prom_version": __version__}) == 1
    assert value("celery_worker_invalid_messages_total", {**host, "reason": INVALID_TASK}) == 1


def test_longest_running_is_the_oldest_execution_per_task_and_queue() -> None:
    requests = [
        _Request("a", time_start=100.0),
        _Request("a", time_start=90.0),
        _Request("a", time_start=95.0, queue="other"),
        _Request("b", time_start=None),  # not accepted by the pool yet
    ]

    family = longest_running("w@h", requests, now=110.0)

    assert {tuple(sample.labels.values()): sample.value for sample in family.samples} == {
        ("a", "w@h", "celery"): 20.0,
        ("a", "w@h", "other"): 15.0,
    }


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_running_task_shows_its_age_until_it_ends(
    pool: str, redis_broker: Broker, tmp_path: Path
) -> None:
    longest = "celery_task_longest_running_seconds"
    with running_worker(redis_broker, tmp_path, pool=pool, concurrency=2) as worker:
        app = load_test_app(redis_broker, worker.queue)
        sent = time.time()
        app.send_task("cptest_tasks.sleep", (4,))
        app.send_task("cptest_tasks.noop")
        task = {
            "name": "cptest_tasks.sleep",
            "hostname": worker.hostname,
            "queue_name": worker.queue,
        }
        running = worker.wait_for_scrape(
            lambda s: (s.value(longest, **task) or 0) >= 1.0, what="the sleep to run 1 s"
        )
        age = running.value(longest, **task)
        assert age is not None
        assert age <= time.time() - sent
        assert set(running.series(longest)) == {frozenset(task.items())}  # noop finished
        worker.wait_for_scrape(
            lambda s: s.value("celery_task_succeeded_total", **task) == 1, what="the sleep to end"
        )
        assert worker.scrape().series(longest) == {}
