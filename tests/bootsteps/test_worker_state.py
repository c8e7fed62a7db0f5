"""Worker gauges: pool names and sizes, invalid-message tallies, one collect() as scraped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import celery
import pytest
from celery.concurrency.gevent import TaskPool as GeventPool
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.worker import state as celery_state
from prometheus_client import CollectorRegistry

from celery_prom import __version__
from celery_prom.bootsteps.worker_state import (
    INVALID_TASK,
    INVALID_UNRECOGNIZED,
    MessageTally,
    WorkerStateCollector,
    pool_name,
    pool_processes,
)


class _Request:
    """Stands in for a task request in Celery's weak request sets."""


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


def _process(returncode: int | None) -> SimpleNamespace:
    return SimpleNamespace(_popen=SimpleNamespace(returncode=returncode))


def test_prefork_processes_count_only_children_that_have_not_exited() -> None:
    children = [_process(None), _process(None), _process(-9), SimpleNamespace(_popen=None)]
    pool = SimpleNamespace(_pool=SimpleNamespace(_pool=children))

    assert pool_processes(pool) == 2


def test_thread_like_pools_report_their_limit_and_solo_one() -> None:
    assert pool_processes(_CustomPool()) == 3
    assert pool_processes(SimpleNamespace(limit=None)) == 1
    assert pool_processes(None) == 0


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
def requests_in_flight() -> Iterator[list[_Request]]:
    """Two active requests, three reserved (the two active among them), one scheduled."""
    held = [_Request() for _ in range(4)]
    active, also_active, waiting, scheduled = held
    celery_state.active_requests.update((active, also_active))
    celery_state.reserved_requests.update((active, also_active, waiting))
    celery_state.scheduled_requests.add(scheduled)
    try:
        yield held
    finally:
        for request_set in (
            celery_state.active_requests,
            celery_state.reserved_requests,
            celery_state.scheduled_requests,
        ):
            for request in held:
                request_set.discard(request)


def test_collect_reads_the_workers_state_at_scrape_time(requests_in_flight: Any) -> None:
    tally = MessageTally()
    tally.add(INVALID_TASK)
    worker = SimpleNamespace(pool=SimpleNamespace(limit=4))
    registry = CollectorRegistry()
    registry.register(WorkerStateCollector(worker, "w1@host", tally))
    host = {"hostname": "w1@host"}

    def value(name: str, labels: dict[str, str] = host) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("celery_worker_tasks_active") == 2
    assert value("celery_worker_tasks_reserved") == 2  # one waiting, one scheduled
    assert value("celery_worker_pool_processes") == 4
    info = {**host, "celery_version": celery.__version__, "pool": "SimpleNamespace"}
    assert value("celery_worker_info", {**info, "celery_prom_version": __version__}) == 1
    assert value("celery_worker_invalid_messages_total", {**host, "reason": INVALID_TASK}) == 1
