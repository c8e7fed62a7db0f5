"""Pool processes: how many run, how many the prefork pool started, each one's memory."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from celery import signals
from prometheus_client import CollectorRegistry

from celery_prom.bootsteps.pool_processes import PoolProcesses, pool_processes, resident_bytes
from celery_prom.faults import Faults
from tests.support import Broker, load_test_app, running_worker


class _CustomPool:
    limit = 3


def _process(returncode: int | None, pid: int = 0, index: int = 0) -> SimpleNamespace:
    return SimpleNamespace(_popen=SimpleNamespace(returncode=returncode), pid=pid, index=index)


def _prefork(children: list[Any]) -> SimpleNamespace:
    return SimpleNamespace(_pool=SimpleNamespace(_pool=children))


def test_prefork_processes_count_only_children_that_have_not_exited() -> None:
    children = [_process(None), _process(None), _process(-9), SimpleNamespace(_popen=None)]

    assert pool_processes(_prefork(children)) == 2


def test_thread_like_pools_report_their_limit_and_solo_one() -> None:
    assert pool_processes(_CustomPool()) == 3
    assert pool_processes(SimpleNamespace(limit=None)) == 1
    assert pool_processes(None) == 0


def test_resident_bytes_reads_a_live_process_and_none_for_a_gone_one() -> None:
    own = resident_bytes(os.getpid())

    assert own is not None
    assert own > 1024 * 1024
    assert resident_bytes(2**22 + 1) is None  # above the kernel's pid limit


def test_prefork_children_memory_by_slot_and_processes_started_from_the_signal() -> None:
    live = _process(None, pid=os.getpid(), index=1)
    exited = _process(0, pid=os.getpid(), index=0)
    worker = SimpleNamespace(pool=_prefork([exited, live]))
    pool = PoolProcesses(worker, "w@h", Faults())
    pool.connect()
    try:
        for _ in range(3):
            signals.worker_before_create_process.send(sender=None)
    finally:
        pool.disconnect()
    signals.worker_before_create_process.send(sender=None)  # no longer counted
    registry = CollectorRegistry()
    registry.register(pool)

    host = {"hostname": "w@h"}
    assert registry.get_sample_value("celery_worker_pool_processes", host) == 1
    assert registry.get_sample_value("celery_worker_pool_processes_started_total", host) == 3
    memory = "celery_worker_pool_process_resident_memory_bytes"
    live_memory = registry.get_sample_value(memory, {**host, "process_index": "1"})
    assert live_memory is not None
    assert live_memory > 1024 * 1024
    assert registry.get_sample_value(memory, {**host, "process_index": "0"}) is None


def test_pools_without_children_have_no_started_count_or_memory() -> None:
    registry = CollectorRegistry()
    registry.register(PoolProcesses(SimpleNamespace(pool=_CustomPool()), "w@h", Faults()))

    assert registry.get_sample_value("celery_worker_pool_processes", {"hostname": "w@h"}) == 3
    assert (
        registry.get_sample_value("celery_worker_pool_processes_started_total", {"hostname": "w@h"})
        is None
    )


MIB = 1024 * 1024


def test_a_child_holding_memory_shows_it_in_its_slot(redis_broker: Broker, tmp_path: Path) -> None:
    with running_worker(redis_broker, tmp_path, concurrency=2) as worker:
        app = load_test_app(redis_broker, worker.queue)
        app.send_task("cptest_tasks.hold_memory", (200,))
        memory = "celery_worker_pool_process_resident_memory_bytes"
        scrape = worker.wait_for_scrape(
            lambda s: any(value >= 200 * MIB for value in s.series(memory).values()),
            what="a child holding 200 MiB",
        )

    by_slot = {
        dict(labels)["process_index"]: value for labels, value in scrape.series(memory).items()
    }
    assert sorted(by_slot) == ["0", "1"]
    assert sorted(value >= 200 * MIB for value in by_slot.values()) == [False, True]
    assert min(by_slot.values()) < 150 * MIB
    started = "celery_worker_pool_processes_started_total"
    assert scrape.value(started, hostname=worker.hostname) == 2


def test_recycled_children_count_as_started(redis_broker: Broker, tmp_path: Path) -> None:
    tasks = 5
    with running_worker(
        redis_broker, tmp_path, concurrency=2, extra_args=("--max-tasks-per-child", "1")
    ) as worker:
        app = load_test_app(redis_broker, worker.queue)
        for _ in range(tasks):
            app.send_task("cptest_tasks.noop")
        task = {
            "name": "cptest_tasks.noop",
            "hostname": worker.hostname,
            "queue_name": worker.queue,
        }
        started = "celery_worker_pool_processes_started_total"
        # Two first children, then one replacement after each task.
        worker.wait_for_scrape(
            lambda s: (
                s.value("celery_task_succeeded_total", **task) == tasks
                and s.value(started, hostname=worker.hostname) == 2 + tasks
            ),
            what=f"{2 + tasks} children started",
        )


def test_threads_have_no_started_count_or_memory(redis_broker: Broker, tmp_path: Path) -> None:
    with running_worker(redis_broker, tmp_path, pool="threads", concurrency=2) as worker:
        scrape = worker.scrape()

    assert scrape.value("celery_worker_pool_processes", hostname=worker.hostname) == 2
    assert scrape.series("celery_worker_pool_processes_started_total") == {}
    assert scrape.series("celery_worker_pool_process_resident_memory_bytes") == {}
