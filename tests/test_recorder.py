"""The recorder's semantics, on hand-written event sequences."""

from __future__ import annotations

from typing import Any

import pytest

from celery_prom.recorder import (
    DROP_DUPLICATE,
    DROP_EVICTED,
    DROP_INVALID_FIELD,
    DROP_MALFORMED,
    DROP_UNKNOWN_TASK,
    DROP_UNKNOWN_TYPE,
    Recorder,
    exception_class_name,
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

HOST = "celery@a"
KEY = ("app.add", HOST, "default")


class Events:
    """Builds Celery-shaped task events for one worker."""

    def __init__(self, recorder: Recorder, hostname: str = HOST) -> None:
        self.recorder = recorder
        self.hostname = hostname

    def send(self, type_: str, uuid: str, **fields: Any) -> None:
        event = {"type": type_, "uuid": uuid, "hostname": self.hostname, "timestamp": 1000.0}
        event.update(fields)
        self.recorder.record(event)

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
    events.received("t1", sent_at=998.0)
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
    events.send("task-failed", "t1", exception="ValueError('bad input')")

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
    recorder.record_ignored(HOST, "t1", replaced=True)
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
    recorder.record_ignored(HOST, "t1", replaced=True)
    events.send("task-started", "t1")
    events.send("task-failed", "t1", exception="ValueError('x')")

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
    recorder.record_ignored(HOST, "t1", replaced=True)

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
    recorder.record_ignored(HOST, "t1", replaced=False)

    assert counters(store) == (1, 1, 0, 0, 0, 0, 0, 1)


def test_an_ignore_of_a_task_never_received_is_dropped(
    recorder: Recorder, store: TaskStore
) -> None:
    recorder.record_ignored(HOST, "t1", replaced=True)

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
    events.send("task-failed", "t1", exception="TimeLimitExceeded(1.0)")
    events.send("task-failed", "t1", exception="ExceptionWithTraceback()")

    assert failures(store) == {"TimeLimitExceeded": 1}
    assert recorder.stats.dropped == {DROP_DUPLICATE: 1}


def test_reject_without_requeue_counts_both_the_failure_and_the_rejection(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-failed", "t1", exception="x", exception_type="Reject")
    events.send("task-rejected", "t1", requeue=False)

    assert failures(store) == {"Reject": 1}
    assert counters(store)[REJECTED] == 1
    assert recorder.stats.dropped == {}


def test_a_task_revoked_before_it_started_counts_as_revoked(
    events: Events, store: TaskStore
) -> None:
    events.received("t1", eta="2030-01-01T00:00:00+00:00")
    events.send("task-revoked", "t1", terminated=False, expired=False)

    assert counters(store) == (1, 0, 0, 0, 1, 0, 0, 0)


def test_a_task_named_by_the_worker_counts_even_if_never_received(
    events: Events, store: TaskStore
) -> None:
    # Revoked on arrival / unregistered: no task-received, but the tap names the task.
    events.send("task-revoked", "t1", name="app.add", queue="default")
    events.send(
        "task-failed", "t2", name="app.nope", queue="default", exception="NotRegistered('app.nope')"
    )

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
    events.received("t1", sent_at=995.5)
    events.send("task-started", "t1", timestamp=1000.0)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.queue_wait.buckets == [0, 1, 0]
    assert snap.queue_wait.sum == 4.5


def test_queue_wait_of_an_eta_task_starts_at_its_eta(events: Events, store: TaskStore) -> None:
    # Published at 900, due at 990 (1970-01-01T00:16:30Z), started at 1000: waited 10 s.
    events.received("t1", sent_at=900.0, eta="1970-01-01T00:16:30+00:00")
    events.send("task-started", "t1", timestamp=1000.0)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.queue_wait.sum == 10.0


def test_queue_wait_is_not_guessed_without_a_publish_time(events: Events, store: TaskStore) -> None:
    events.received("t1")
    events.send("task-started", "t1")

    snap = store.snapshot(KEY)
    assert snap is not None
    assert snap.queue_wait.buckets == [0, 0, 0]
    assert counters(store)[STARTED] == 1


def test_clock_skew_never_gives_a_negative_wait(events: Events, store: TaskStore) -> None:
    events.received("t1", sent_at=1005.0)
    events.send("task-started", "t1", timestamp=1000.0)

    snap = store.snapshot(KEY)
    assert snap is not None
    assert (snap.queue_wait.buckets, snap.queue_wait.sum) == ([1, 0, 0], 0.0)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("not a dict", DROP_MALFORMED),
        ({"uuid": "t1", "hostname": HOST}, DROP_MALFORMED),
        ({"type": 7, "uuid": "t1", "hostname": HOST}, DROP_MALFORMED),
        ({"type": "task-received", "hostname": HOST, "name": "a"}, DROP_MALFORMED),
        ({"type": "task-received", "uuid": "t1", "name": "a"}, DROP_MALFORMED),
        ({"type": "task-received", "uuid": 5, "hostname": HOST, "name": "a"}, DROP_MALFORMED),
        ({"type": "task-exploded", "uuid": "t1", "hostname": HOST}, DROP_UNKNOWN_TYPE),
        ({"type": "task-received", "uuid": "t1", "hostname": HOST}, DROP_INVALID_FIELD),
        (
            {"type": "task-received", "uuid": "t1", "hostname": HOST, "name": ["a"]},
            DROP_INVALID_FIELD,
        ),
        (
            {"type": "task-received", "uuid": "t1", "hostname": HOST, "name": "a" * 300},
            DROP_INVALID_FIELD,
        ),
        (
            {"type": "task-received", "uuid": "t1", "hostname": HOST, "name": "bad\udc80"},
            DROP_INVALID_FIELD,
        ),
        (
            {"type": "task-received", "uuid": "t1", "hostname": "h" * 300, "name": "a"},
            DROP_INVALID_FIELD,
        ),
        (
            {"type": "task-received", "uuid": "t1", "hostname": HOST, "name": "a", "queue": 3},
            DROP_INVALID_FIELD,
        ),
        (
            {
                "type": "task-received",
                "uuid": "t1",
                "hostname": HOST,
                "name": "a",
                "sent_at": "yesterday",
            },
            DROP_INVALID_FIELD,
        ),
        (
            {
                "type": "task-received",
                "uuid": "t1",
                "hostname": HOST,
                "name": "a",
                "sent_at": 1.0,
                "eta": "soon",
            },
            DROP_INVALID_FIELD,
        ),
        (
            {
                "type": "task-received",
                "uuid": "t1",
                "hostname": HOST,
                "name": "a",
                "sent_at": float("nan"),
            },
            DROP_INVALID_FIELD,
        ),
    ],
)
def test_malformed_events_are_dropped_by_reason(
    recorder: Recorder, store: TaskStore, event: object, reason: str
) -> None:
    recorder.record(event)

    assert recorder.stats.dropped == {reason: 1}
    assert recorder.stats.received == 1
    assert store.versions() == []


def test_a_malformed_outcome_leaves_the_task_in_flight(
    events: Events, store: TaskStore, recorder: Recorder
) -> None:
    events.received("t1")
    events.send("task-started", "t1")
    events.send("task-succeeded", "t1", runtime="fast")
    events.send("task-succeeded", "t1", runtime=0.5)

    assert counters(store)[SUCCEEDED] == 1
    assert recorder.stats.dropped == {DROP_INVALID_FIELD: 1}


def test_ignored_event_types_are_neither_counted_nor_dropped(
    events: Events, recorder: Recorder, store: TaskStore
) -> None:
    events.send("task-sent", "t1", name="app.add")

    assert store.versions() == []
    assert recorder.stats.dropped == {}


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


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("ValueError('x')", "ValueError"),
        ("KeyError('k')", "KeyError"),
        ("billiard.exceptions.WorkerLostError('Worker exited')", "WorkerLostError"),
        ("TimeLimitExceeded(1.0)", "TimeLimitExceeded"),
        ("NotRegistered('app.nope')", "NotRegistered"),
        ("UnpickleableExceptionWrapper('app.errors', 'NotPicklable', ('x',), 'x')", "NotPicklable"),
        ("ExceptionWithTraceback()", "unknown"),
        ("<something went wrong>", "unknown"),
        ("reject requeue=False: r", "unknown"),
        ("", "unknown"),
    ],
)
def test_exception_class_names_are_read_from_reprs(text: str, name: str) -> None:
    assert exception_class_name(text) == name


def test_an_exact_exception_type_wins_over_the_repr(events: Events, store: TaskStore) -> None:
    events.received("t1")
    events.send(
        "task-failed", "t1", exception="ExceptionWithTraceback()", exception_type="WorkerLostError"
    )

    assert failures(store) == {"WorkerLostError": 1}


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
