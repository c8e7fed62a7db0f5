"""The task store: series per label set, histograms, caps, forgetting a worker."""

from __future__ import annotations

import threading
import time

import pytest

from celery_prom.metrics import OVERFLOW_LABEL_VALUE, LabelLimits
from celery_prom.store import (
    MAX_EXEMPLAR_TASK_ID,
    RECEIVED,
    SUCCEEDED,
    Histogram,
    LabelOverflowCollector,
    TaskStore,
    cumulative_buckets,
)

KEY = ("app.add", "celery@a", "celery")


def test_each_label_set_gets_its_own_series() -> None:
    store = TaskStore()
    store.count(KEY, RECEIVED)
    store.count(("app.add", "celery@b", "celery"), RECEIVED)
    store.count(KEY, RECEIVED)

    assert [key for key, _ in store.versions()] == [KEY, ("app.add", "celery@b", "celery")]
    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.counters[RECEIVED] == 2


def test_series_are_listed_in_key_order_whatever_order_they_arrived_in() -> None:
    store = TaskStore()
    for name in ("c", "a", "b"):
        store.count((name, "celery@a", "celery"), RECEIVED)
    first = [key[0] for key, _ in store.versions()]
    store.count(("a0", "celery@a", "celery"), RECEIVED)
    store.count(("c", "celery@a", "celery"), RECEIVED)  # a series that changes keeps its place

    assert first == ["a", "b", "c"]
    assert [key[0] for key, _ in store.versions()] == ["a", "a0", "b", "c"]


def test_observations_fall_into_le_buckets() -> None:
    store = TaskStore(runtime_buckets=(0.1, 1.0))
    for runtime in (0.05, 0.1, 0.5, 1.0, 7.0):
        store.count_success(KEY, runtime)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.runtime.buckets == [2, 2, 1]
    assert snap.runtime.sum == pytest.approx(8.65)
    assert cumulative_buckets(store.runtime_bounds, snap.runtime.buckets) == [
        ("0.1", 2),
        ("1.0", 4),
        ("+Inf", 5),
    ]


def test_a_success_without_runtime_counts_without_an_observation() -> None:
    store = TaskStore(runtime_buckets=(1.0,))
    store.count_success(KEY, None)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert (snap.counters[SUCCEEDED], snap.runtime.buckets) == (1, [0, 0])


def exemplars(histogram: Histogram) -> list[tuple[str, float] | None]:
    return [None if e is None else e[:2] for e in histogram.exemplars]


def test_each_bucket_keeps_its_latest_observation_that_named_a_task() -> None:
    store = TaskStore(runtime_buckets=(0.1, 1.0), queue_wait_buckets=(1.0,))
    before = time.time()
    store.count_success(KEY, 0.05, task_id="a")
    store.count_success(KEY, 0.5, task_id="b")
    store.count_success(KEY, 0.07, task_id="c")
    store.count_success(KEY, 0.08)
    store.count_success(KEY, 0.09, task_id=None)
    store.count_start(KEY, 3.0, task_id="w")
    after = time.time()

    snap = store.snapshot(KEY)
    assert snap is not None
    assert exemplars(snap.runtime) == [("c", 0.07), ("b", 0.5), None]
    assert exemplars(snap.queue_wait) == [None, ("w", 3.0)]
    stamps = [e[2] for e in (*snap.runtime.exemplars, *snap.queue_wait.exemplars) if e]
    assert all(before <= stamp <= after for stamp in stamps)


def test_a_task_id_too_long_for_openmetrics_leaves_the_previous_exemplar() -> None:
    store = TaskStore(runtime_buckets=(1.0,))
    longest = "x" * MAX_EXEMPLAR_TASK_ID
    store.count_success(KEY, 0.5, task_id=longest)
    store.count_success(KEY, 0.6, task_id=longest + "y")

    snap = store.snapshot(KEY)
    assert snap is not None
    assert MAX_EXEMPLAR_TASK_ID == 121  # 128 characters less the label name "task_id"
    assert exemplars(snap.runtime) == [(longest, 0.5), None]
    assert snap.runtime.buckets == [2, 0]


def test_a_snapshot_keeps_the_exemplars_of_its_time() -> None:
    store = TaskStore(runtime_buckets=(1.0,))
    store.count_success(KEY, 0.5, task_id="a")
    snap = store.snapshot(KEY)
    store.count_success(KEY, 0.6, task_id="b")

    assert snap is not None
    assert exemplars(snap.runtime) == [("a", 0.5), None]


def test_every_change_bumps_the_version() -> None:
    store = TaskStore()
    store.count(KEY, RECEIVED)
    first = store.versions()
    store.count_failure(KEY, "ValueError")

    assert store.versions()[0][1] == first[0][1] + 1


@pytest.mark.parametrize(
    "bounds", [(), (2.0, 1.0), (1.0, 1.0), (float("inf"),), (1.0, float("nan"))]
)
def test_bucket_bounds_must_increase(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bucket"):
        TaskStore(runtime_buckets=bounds)


def test_values_past_a_cap_become_the_overflow_value() -> None:
    store = TaskStore(limits=LabelLimits(task_names=2, queues=1, hostnames=5, exceptions=1))
    for name in ("a", "b", "c", "d"):
        store.count((name, "h", "q1"), RECEIVED)
    store.count(("a", "h", "q2"), RECEIVED)
    store.count_failure(("a", "h", "q1"), "ValueError")
    store.count_failure(("a", "h", "q1"), "KeyError")

    keys = [key for key, _ in store.versions()]
    assert keys == [
        (OVERFLOW_LABEL_VALUE, "h", "q1"),
        ("a", "h", OVERFLOW_LABEL_VALUE),
        ("a", "h", "q1"),
        ("b", "h", "q1"),
    ]
    overflow = store.snapshot((OVERFLOW_LABEL_VALUE, "h", "q1"))
    assert overflow is not None
    assert overflow.counters[RECEIVED] == 2
    failures = store.snapshot(("a", "h", "q1"))
    assert failures is not None
    assert dict(failures.failures) == {"ValueError": 1, OVERFLOW_LABEL_VALUE: 1}
    assert store.overflow_counts() == {
        "name": 2,
        "queue_name": 1,
        "hostname": 0,
        "exception": 1,
    }
    samples = {
        s.labels["label"]: s.value
        for family in LabelOverflowCollector(store).collect()
        for s in family.samples
    }
    assert samples == {"name": 2, "queue_name": 1, "hostname": 0, "exception": 1}


def test_forgetting_a_hostname_frees_its_series_and_its_cap_slot() -> None:
    store = TaskStore(limits=LabelLimits(hostnames=1))
    store.count(("a", "celery@old", "q"), RECEIVED)

    assert store.forget_hostname("celery@old") == 1
    store.count(("a", "celery@new", "q"), RECEIVED)
    assert [key for key, _ in store.versions()] == [("a", "celery@new", "q")]


def test_concurrent_recording_loses_nothing() -> None:
    store = TaskStore()

    def record() -> None:
        for _ in range(5000):
            store.count(KEY, RECEIVED)
            store.count_success(KEY, 0.01)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    snap = store.snapshot(KEY)
    assert snap is not None
    assert (snap.counters[RECEIVED], snap.counters[SUCCEEDED]) == (20000, 20000)
    assert sum(snap.runtime.buckets) == 20000
