"""Worker liveness: up and down from heartbeats, purging, and no resurrection."""

from __future__ import annotations

import gc
import signal
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from celery_prom.exporter.liveness import Clock, WorkerLiveness
from celery_prom.recorder import Recorder
from celery_prom.store import TaskStore
from celery_prom.task_event import TaskEvent
from tests.exporter_process import RawEvents, event, hostname, plain_worker, running_exporter_for
from tests.support import Broker, Scrape, WorkerProcess


class FakeClock(Clock):
    def __init__(self) -> None:
        self.now = 1000.0

    def wall(self) -> float:
        return self.now + 1_700_000_000

    def monotonic(self) -> float:
        return self.now


def heartbeat(host: str, sent_at: float, **fields: Any) -> dict[str, Any]:
    return {"type": "worker-heartbeat", "hostname": host, "timestamp": sent_at, **fields}


class Harness:
    def __init__(self, timeout: float = 30, purge_after: float = 600) -> None:
        self.clock = FakeClock()
        self.liveness = WorkerLiveness(timeout, purge_after, self.clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.liveness)

    def value(self, name: str, host: str) -> float | None:
        return self.registry.get_sample_value(name, {"hostname": host})


def test_a_worker_is_up_while_heartbeats_arrive_within_the_timeout() -> None:
    h = Harness(timeout=30)
    assert h.liveness.observe(heartbeat("w@h", 5.0, active=3, processed=40)) is None
    assert h.value("celery_worker_up", "w@h") == 1
    assert h.value("celery_worker_tasks_active", "w@h") == 3
    assert h.value("celery_worker_tasks_processed_total", "w@h") == 40
    assert h.value("celery_worker_last_heartbeat_timestamp_seconds", "w@h") == h.clock.wall()
    h.clock.now += 30
    assert h.value("celery_worker_up", "w@h") == 1
    h.clock.now += 0.5
    assert h.value("celery_worker_up", "w@h") == 0
    assert h.value("celery_worker_tasks_active", "w@h") is None


def test_hostnames_past_the_cap_are_dropped() -> None:
    h = Harness()
    h.liveness.max_workers = 2
    assert [h.liveness.observe(heartbeat(f"w{n}@h", 1.0)) for n in range(3)] == [
        None,
        None,
        "too_many_workers",
    ]
    assert h.liveness.observe(heartbeat("w0@h", 2.0)) is None
    assert h.value("celery_worker_up", "w2@h") is None


def test_worker_offline_marks_it_down_at_once() -> None:
    h = Harness()
    h.liveness.observe(heartbeat("w@h", 5.0))
    h.liveness.observe({"type": "worker-offline", "hostname": "w@h", "timestamp": 6.0})
    assert h.value("celery_worker_up", "w@h") == 0
    assert h.liveness.observe({"type": "worker-offline", "hostname": "z@h"}) is None
    assert h.value("celery_worker_up", "z@h") is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"hostname": None}, "malformed"),
        ({"hostname": "x" * 300}, "invalid_field"),
        ({"timestamp": "now"}, "invalid_field"),
        ({"active": -1}, "invalid_field"),
        ({"processed": True}, "invalid_field"),
    ],
)
def test_unusable_worker_events_give_a_reason(fields: dict[str, Any], reason: str) -> None:
    h = Harness()
    assert h.liveness.observe({**heartbeat("w@h", 1.0), **fields}) == reason


def test_offline_workers_are_purged_and_not_revived_by_late_events() -> None:
    h = Harness(timeout=30, purge_after=600)
    h.liveness.observe(heartbeat("w@h", 5.0))
    h.liveness.observe(heartbeat("v@h", 5.0))
    h.clock.now += 500
    h.liveness.observe(heartbeat("v@h", 505.0))
    h.clock.now += 100.5
    assert h.liveness.purge_offline() == ["w@h"]
    assert h.value("celery_worker_up", "w@h") is None
    assert h.value("celery_worker_up", "v@h") == 0  # down, but not silent long enough
    # Late: sent before the worker went silent, or within a worker timeout of its last.
    assert h.liveness.observe(heartbeat("w@h", 4.0)) == "offline_worker"
    assert h.liveness.observe(heartbeat("w@h", 35.0)) == "offline_worker"
    assert not h.liveness.accepts("w@h")
    assert h.liveness.accepts("v@h")
    # A heartbeat sent well after the last one: the worker is back.
    assert h.liveness.observe(heartbeat("w@h", 700.0)) is None
    assert h.liveness.accepts("w@h")
    assert h.value("celery_worker_up", "w@h") == 1


def test_scrapes_only_read_and_purging_is_left_to_the_owner() -> None:
    h = Harness(timeout=30, purge_after=600)
    h.liveness.observe(heartbeat("w@h", 5.0))
    h.clock.now += 601
    assert [h.value("celery_worker_up", "w@h") for _ in range(2)] == [0, 0]
    assert h.liveness.purge_offline() == ["w@h"]
    assert h.value("celery_worker_up", "w@h") is None


def test_no_purge_while_disconnected_nor_before_workers_could_report_again() -> None:
    h = Harness(timeout=30, purge_after=600)
    h.liveness.observe(heartbeat("w@h", 5.0))
    h.liveness.hold_purge()
    h.clock.now += 1000
    assert h.liveness.purge_offline() == []
    h.liveness.resume_purge()
    h.clock.now += 29
    assert h.liveness.purge_offline() == []
    h.clock.now += 2
    assert h.liveness.purge_offline() == ["w@h"]


def advertising(host: str, sent_at: float, address: object) -> dict[str, Any]:
    return heartbeat(host, sent_at, celery_prom_address=address)


def test_the_targets_are_the_addresses_of_workers_that_have_not_said_goodbye() -> None:
    h = Harness(timeout=30, purge_after=600)
    h.liveness.observe(advertising("b@h", 1.0, "10.0.0.2:9808"))
    h.liveness.observe(advertising("a@h", 1.0, "[fd00::1]:9810"))
    h.liveness.observe(advertising("gone@h", 1.0, "10.0.0.3:9808"))
    h.liveness.observe(heartbeat("plain@h", 1.0))
    h.liveness.observe({"type": "worker-offline", "hostname": "gone@h", "timestamp": 2.0})
    h.clock.now += 31  # every worker is down now, none purged

    assert h.liveness.targets() == [("a@h", "[fd00::1]:9810"), ("b@h", "10.0.0.2:9808")]


def test_a_purged_worker_leaves_the_targets() -> None:
    h = Harness(timeout=30, purge_after=600)
    h.liveness.observe(advertising("w@h", 1.0, "10.0.0.2:9808"))
    h.clock.now += 601
    assert h.liveness.purge_offline() == ["w@h"]
    assert h.liveness.targets() == []


def test_the_latest_event_says_where_a_worker_is() -> None:
    h = Harness()
    h.liveness.observe(advertising("w@h", 1.0, "10.0.0.2:9808"))
    h.liveness.observe(advertising("w@h", 2.0, "10.0.0.2:9809"))
    assert h.liveness.targets() == [("w@h", "10.0.0.2:9809")]
    h.liveness.observe(heartbeat("w@h", 3.0))  # its endpoint went away, the worker did not
    assert h.liveness.targets() == []


@pytest.mark.parametrize(
    "address", [9808, "10.0.0.2", "10.0.0.2:http", "bad host:9808", "x" * 300 + ":9808"]
)
def test_an_unusable_address_leaves_the_worker_alive_but_unlisted(address: object) -> None:
    h = Harness()
    assert h.liveness.observe(advertising("w@h", 1.0, address)) is None
    assert h.value("celery_worker_up", "w@h") == 1
    assert h.liveness.targets() == []


@pytest.mark.slow
def test_the_exporter_purges_a_silent_worker_and_drops_its_late_events(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    redis_broker = own_redis_broker
    host = hostname()

    def task_series(result: Scrape) -> float:
        return result.total("celery_task_received_total", hostname=host)

    with running_exporter_for(
        redis_broker, tmp_path, "--worker-timeout", "1", "--purge-offline-after", "2"
    ) as exporter:
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        raw = RawEvents(redis_broker)
        sent = time.time()
        raw.events(
            [
                event("worker-heartbeat", host, 1, sent, active=1, processed=1),
                event("task-received", host, 2, sent, uuid="t1", name="demo.slow"),
            ]
        )
        exporter.wait_for_scrape(
            lambda s: s.value("celery_worker_up", hostname=host) == 1 and task_series(s) == 1,
            what="the worker up with one task",
        )
        exporter.wait_for_scrape(
            lambda s: s.value("celery_worker_up", hostname=host) is None, what="the worker purged"
        )
        raw.events(
            [
                event("task-started", host, 3, sent + 0.5, uuid="t1"),
                event("worker-heartbeat", host, 4, sent + 0.5),
            ]
        )
        late = exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_events_dropped_total", reason="offline_worker") == 2,
            what="two late events dropped",
        )
        assert late.value("celery_worker_up", hostname=host) is None
        assert task_series(late) == 0
        raw.events([event("worker-heartbeat", host, 5, time.time() + 5)])
        exporter.wait_for_scrape(
            lambda s: s.value("celery_worker_up", hostname=host) == 1, what="the worker back"
        )
        raw.close()


def test_memory_stays_flat_while_thousands_of_workers_come_and_go() -> None:
    """Rounds of 2,000 new worker hostnames, each running a task, then going silent: once
    the purged-worker memory (tombstones) is full, a round leaves no memory behind."""
    clock = FakeClock()
    store = TaskStore()
    recorder = Recorder(store)
    liveness = WorkerLiveness(30, 600, clock)

    def round_of_workers(number: int) -> None:
        for index in range(2000):
            host = f"celery@worker-{number}-{index}"
            assert liveness.observe(heartbeat(host, clock.wall(), active=1)) is None
            for kind in ("task-received", "task-started", "task-succeeded"):
                recorder.record(
                    TaskEvent(
                        kind, f"t{index}", host, "app.add", timestamp=clock.wall(), runtime=0.1
                    )
                )
        clock.now += 601
        purged = liveness.purge_offline()
        assert len(purged) == 2000
        for host in purged:
            store.forget_hostname(host)
            recorder.forget_hostname(host)

    tracemalloc.start()
    try:
        for number in range(6):  # 12,000 hostnames: the 10,000 tombstones are full
            round_of_workers(number)
        gc.collect()
        settled = tracemalloc.get_traced_memory()[0]
        for number in range(6, 10):
            round_of_workers(number)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    assert store.versions() == []
    assert after - settled < 64 * 1024, f"grew by {after - settled} bytes over 8,000 workers"


def worker_is_up(worker: WorkerProcess) -> Callable[[Scrape], bool]:
    return lambda s: s.value("celery_worker_up", hostname=worker.hostname) == 1


@pytest.mark.slow
def test_a_killed_worker_is_down_after_the_exporters_worker_timeout(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    # When exactly silence turns into down is tested above, with a fake clock. Here: the
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
