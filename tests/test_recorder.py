"""The recorder's semantics, on hand-written sequences of typed events."""

from __future__ import annotations

from typing import Any

import pytest

from celery_prom.recorder import (
    DROP_DUPLICATE,
    DROP_EVICTED,
    DROP_UNKNOWN_TASK,
    Recorder,
    RecorderStats,
)
from celery_prom.store import (
    RECEIVED,
    REJECTED,
    RETRIED,
    REVOKED,
    STARTED,
    SUCCEEDED,
    TaskStore,
)
from celery_prom.task_event import (
    DROP_INVALID_FIELD,
    DROP_UNKNOWN_TYPE,
    TASK_IGNORED,
    TASK_REPLACED,
    TaskEvent,
)

HOST = "celery@a"
KEY = ("app.add", HOST, "default")


class Events:
    """Records task events of one worker."""

    def __init__(self, recorder: Recorder, hostname: str = HOST) -> None:
        self.recorder = recorder
        self.hostname = hostname

    def send(self, type_: str, uuid: str, **fields: Any) -> None:
        fields.setdefault("timestamp", 1000.0)
        self.recorder.record(TaskEvent(type_, uuid, self.hostname, **fields))

    def received(self, uuid: str, name: str = "app.add", **fields: Any) -> None:
        fields.setdefault("queue", "default")
        self.send("task-received", uuid, name=name, **fields)


@pytest.fixture
def store() -> TaskStore:
    return TaskStore(runtime_buckets=(0.1, 1.0), queue_wait_buckets=(1.0, 10.0))


@pytest.fixture
def recorder(store: TaskStore) -> Recorder:
    return Recorder(store)


@pytest.fixture
def events(recorder: Recorder) -> Events:
    return Events(recorder)


def counters(store: TaskStore, key: tuple[str, str, str] = KEY) -> tuple[int, ...]:
    snap = store.snapshot(key)
    assert snap is not None, f"no series {key}"
    return snap.counters


def failures(store: TaskStore, key: tuple[str, str, str] = KEY) -> dict[str, int]:
    snap = store.snapshot(key)
    assert snap is not None
    return dict(snap.failures)


def test_a_successful_task_counts_received_started_succeeded_and_its_runtime(
    events: Events, store: TaskStore
) -> None:
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime=0.5)

    assert counters(store) == (1, 1, 1, 0, 0, 0, 0, 0)
    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.runtime.buckets == [0, 1, 0]
    assert snap.runtime.sum == 0.5


def test_queue_wait_and_runtime_observations_name_their_task(
    events: Events, store: TaskStore
) -> None:
    events.received("t1", ready_at=998.0)
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime=0.5)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert [e and e[:2] for e in snap.queue_wait.exemplars] == [
        None,
        ("t1", 2.0),
        None,
    ]
    assert [e and e[:2] for e in snap.runtime.exemplars] == [None, ("t1", 0.5), None]


def test_outcome_events_need_no_name_or_queue_of_their_own(
    events: Events, store: TaskStore
) -> None:
    events.received("t1", queue="high")
    events.send("task-started", "t1")
    events.send("task-failed", "t1", exception="ValueError")

    assert failures(store, ("app.add", HOST, "high")) == {"ValueError": 1}


def test_a_retry_received_before_the_old_attempt_reports_keeps_both_attempts(
    events: Events, store: TaskStore
) -> None:
    # The retried message (same id) arrives before the first attempt's task-retried.
    events.received("t1", queue="default")
    events.send("task-started", "t1")
    events.received("t1", queue="retries")
    events.send("task-retried", "t1")
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime=0.01)

    first = counters(store, KEY)
    second = counters(store, ("app.add", HOST, "retries"))
    assert (first[RECEIVED], first[STARTED], first[RETRIED], first[SUCCEEDED]) == (1, 1, 1, 0)
    assert (second[RECEIVED], second[STARTED], second[RETRIED], second[SUCCEEDED]) == (1, 1, 0, 1)


REPLACED_KEY = ("app.replace_me", HOST, "default")


def test_a_replaced_attempt_counts_as_replaced_and_its_replacement_under_its_own_name(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    # Task.replace: the attempt raises Ignore (no event), the replacement reuses its id.
    events.received("t1", name="app.replace_me")
    events.send("task-started", "t1")
    events.send(TASK_REPLACED, "t1")
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime=0.01)

    assert counters(store, REPLACED_KEY) == (1, 1, 0, 0, 0, 0, 1, 0)
    assert counters(store) == (1, 1, 1, 0, 0, 0, 0, 0)
    assert recorder.stats.dropped == {}


def test_a_replacement_received_before_its_predecessor_ends_is_counted_apart(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    events.received("t1", name="app.replace_me")
    events.send("task-started", "t1")
    events.received("t1")
    events.send(TASK_REPLACED, "t1")
    events.send("task-started", "t1")
    events.send("task-failed", "t1", exception="ValueError")

    assert counters(store, REPLACED_KEY) == (1, 1, 0, 0, 0, 0, 1, 0)
    assert counters(store) == (1, 1, 0, 0, 0, 0, 0, 0)
    assert failures(store) == {"ValueError": 1}


def test_a_replacement_that_ends_before_its_predecessor_is_not_taken_for_it(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    # The replacement runs in another pool process and reports before the main process
    # reads the result of the attempt it replaced.
    events.received("t1", name="app.replace_me", retries=2)
    events.send("task-started", "t1")
    events.received("t1", retries=0)
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime=0.01)
    events.send(TASK_REPLACED, "t1")

    assert counters(store, REPLACED_KEY) == (1, 1, 0, 0, 0, 0, 1, 0)
    assert counters(store) == (1, 1, 1, 0, 0, 0, 0, 0)


def test_a_retry_on_another_queue_is_not_taken_for_a_replacement(
    events: Events, store: TaskStore
) -> None:
    events.received("t1", retries=0)
    events.send("task-started", "t1")
    events.received("t1", queue="retries", retries=1)
    events.send("task-started", "t1")
    events.send("task-retried", "t1")
    events.send("task-succeeded", "t1", runtime=0.01)

    first, second = counters(store), counters(store, ("app.add", HOST, "retries"))
    assert (first[RETRIED], first[SUCCEEDED]) == (1, 0)
    assert (second[RETRIED], second[SUCCEEDED]) == (0, 1)


def test_an_attempt_that_raises_ignore_itself_counts_as_ignored(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    events.received("t1")
    events.send("task-started", "t1")
    events.send(TASK_IGNORED, "t1")

    assert counters(store) == (1, 1, 0, 0, 0, 0, 0, 1)


def test_an_ignore_of_a_task_never_received_is_dropped_and_is_no_event_received(
    events: Events, recorder: Recorder, store: TaskStore
) -> None:
    events.send(TASK_REPLACED, "t1")

    assert store.versions() == []
    assert recorder.stats.dropped == {DROP_UNKNOWN_TASK: 1}
    assert recorder.stats.received == 0


def test_the_same_task_id_on_two_workers_is_two_tasks(store: TaskStore) -> None:
    recorder = Recorder(store)
    a, b = Events(recorder, "celery@a"), Events(recorder, "celery@b")
    a.received("t1")
    b.received("t1")
    b.send("task-started", "t1")
    b.send("task-succeeded", "t1", runtime=0.1)
    a.send("task-started", "t1")
    a.send("task-succeeded", "t1", runtime=0.1)

    assert counters(store, ("app.add", "celery@a", "default"))[SUCCEEDED] == 1
    assert counters(store, ("app.add", "celery@b", "default"))[SUCCEEDED] == 1


def test_a_failure_reported_twice_counts_once(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    # A hard time limit: the main process reports task-failed, then the pool does too.
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-failed", "t1", exception="TimeLimitExceeded")
    events.send("task-failed", "t1")

    assert failures(store) == {"TimeLimitExceeded": 1}
    assert recorder.stats.dropped == {DROP_DUPLICATE: 1}


def test_reject_without_requeue_counts_both_the_failure_and_the_rejection(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-failed", "t1", exception="Reject")
    events.send("task-rejected", "t1")

    assert failures(store) == {"Reject": 1}
    assert counters(store)[REJECTED] == 1
    assert recorder.stats.dropped == {}


def test_a_task_revoked_before_it_started_counts_as_revoked(
    events: Events, store: TaskStore
) -> None:
    events.received("t1", ready_at=1900000000.0)
    events.send("task-revoked", "t1")

    assert counters(store) == (1, 0, 0, 0, 1, 0, 0, 0)


def test_a_task_named_by_the_worker_counts_even_if_never_received(
    events: Events, store: TaskStore
) -> None:
    # Revoked on arrival / unregistered: no task-received, but the tap names the task.
    events.send("task-revoked", "t1", name="app.add", queue="default")
    events.send("task-failed", "t2", name="app.nope", queue="default", exception="NotRegistered")

    assert counters(store)[REVOKED] == 1
    assert failures(store, ("app.nope", HOST, "default")) == {"NotRegistered": 1}


def test_outcomes_of_tasks_never_received_are_dropped(
    events: Events, recorder: Recorder, store: TaskStore
) -> None:
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime=1.0)

    assert store.versions() == []
    assert recorder.stats.dropped == {DROP_UNKNOWN_TASK: 2}


def test_a_cancelled_task_is_forgotten_and_counted_again_when_redelivered(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-cancelled", "t1")
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime=0.2)

    assert counters(store) == (2, 2, 1, 0, 0, 0, 0, 0)
    assert recorder.stats.dropped == {}


def test_queue_wait_runs_from_publish_to_start(events: Events, store: TaskStore) -> None:
    events.received("t1", ready_at=995.5)
    events.send("task-started", "t1", timestamp=1000.0)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.queue_wait.buckets == [0, 1, 0]
    assert snap.queue_wait.sum == 4.5


@pytest.mark.parametrize(
    ("ready_at", "started_at"), [(None, 1000.0), (995.0, None)], ids=["unpublished", "untimed"]
)
def test_queue_wait_is_not_guessed_without_both_ends(
    events: Events, store: TaskStore, ready_at: float | None, started_at: float | None
) -> None:
    events.received("t1", ready_at=ready_at)
    events.send("task-started", "t1", timestamp=started_at)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.queue_wait.buckets == [0, 0, 0]
    assert counters(store)[STARTED] == 1


def test_clock_skew_never_gives_a_negative_wait(events: Events, store: TaskStore) -> None:
    events.received("t1", ready_at=1005.0)
    events.send("task-started", "t1", timestamp=1000.0)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert (snap.queue_wait.buckets, snap.queue_wait.sum) == ([1, 0, 0], 0.0)


def test_an_event_of_a_type_without_a_handler_is_dropped(
    events: Events, recorder: Recorder, store: TaskStore
) -> None:
    events.send("task-sent", "t1", name="app.add")

    assert store.versions() == []
    assert recorder.counts() == RecorderStats(1, {DROP_UNKNOWN_TYPE: 1})


def test_a_received_event_that_names_no_task_is_of_an_unknown_task(
    events: Events, recorder: Recorder, store: TaskStore
) -> None:
    events.send("task-received", "t1")

    assert store.versions() == []
    assert recorder.counts() == RecorderStats(1, {DROP_UNKNOWN_TASK: 1})


def test_an_event_no_task_event_could_be_built_from_is_received_and_dropped(
    recorder: Recorder,
) -> None:
    recorder.count_invalid(DROP_INVALID_FIELD)

    assert recorder.counts() == RecorderStats(1, {DROP_INVALID_FIELD: 1})


def test_unfinished_tasks_are_evicted_beyond_the_bound(store: TaskStore) -> None:
    recorder = Recorder(store, max_in_flight=2)
    events = Events(recorder)
    for uuid in ("t1", "t2", "t3"):
        events.received(uuid)
    events.send("task-started", "t1")
    events.send("task-started", "t3")

    assert counters(store)[STARTED] == 1
    assert recorder.stats.dropped == {DROP_EVICTED: 1, DROP_UNKNOWN_TASK: 1}


def test_forgetting_a_worker_drops_its_unfinished_tasks(
    events: Events, recorder: Recorder, store: TaskStore
) -> None:
    events.received("t1")
    recorder.forget_hostname(HOST)
    events.send("task-started", "t1")

    assert counters(store)[STARTED] == 0
    assert recorder.stats.dropped == {DROP_UNKNOWN_TASK: 1}


def test_the_recorder_reports_its_own_counts(events: Events, recorder: Recorder) -> None:
    events.received("t1")
    events.send("task-started", "nope")

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in recorder.collect()
        for s in family.samples
    }
    assert samples == {
        ("celery_prom_events_received_total", ()): 2,
        ("celery_prom_events_dropped_total", (("reason", DROP_UNKNOWN_TASK),)): 1,
    }
