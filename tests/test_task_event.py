"""Building typed task events from Celery's event dicts: every field check, every drop reason."""

from __future__ import annotations

from typing import Any

import pytest

from celery_prom.task_event import (
    DROP_INVALID_FIELD,
    DROP_MALFORMED,
    DROP_UNKNOWN_TYPE,
    InvalidEvent,
    TaskEvent,
    exception_class_name,
    exception_label,
    optional_number,
    parse_task_event,
    ready_at,
    retry_count,
)

HOST = "celery@a"


def task_event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "uuid": "t1", "hostname": HOST, "timestamp": 1000.0, **fields}


def test_a_received_event_names_its_task_queue_publish_time_and_retries() -> None:
    event = task_event("task-received", name="app.add", queue="high", sent_at=995.5, retries=2)

    assert parse_task_event(event) == TaskEvent(
        "task-received", "t1", HOST, "app.add", "high", ready_at=995.5, retries=2
    )


@pytest.mark.parametrize("queue", [None, ""])
def test_a_received_event_without_a_queue_is_on_the_queue_given(queue: str | None) -> None:
    event = task_event("task-received", name="app.add", queue=queue)

    parsed = parse_task_event(event, queue="images")

    assert parsed is not None
    assert parsed.queue == "images"
    assert parse_task_event({**event, "queue": "own"}, queue="images") == TaskEvent(
        "task-received", "t1", HOST, "app.add", "own"
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "task-started"}, TaskEvent("task-started", "t1", HOST, timestamp=1000.0)),
        (
            {"type": "task-succeeded", "runtime": 0.5},
            TaskEvent("task-succeeded", "t1", HOST, runtime=0.5),
        ),
        (
            {"type": "task-failed", "exception": "KeyError('k')"},
            TaskEvent("task-failed", "t1", HOST, exception="KeyError"),
        ),
        ({"type": "task-revoked", "expired": True}, TaskEvent("task-revoked", "t1", HOST)),
        (
            {"type": "task-revoked", "name": "app.add", "queue": "q"},
            TaskEvent("task-revoked", "t1", HOST, "app.add", "q"),
        ),
    ],
    ids=["started", "succeeded", "failed", "revoked", "revoked-named"],
)
def test_each_type_keeps_the_fields_the_recorder_uses(
    fields: dict[str, Any], expected: TaskEvent
) -> None:
    assert parse_task_event({"uuid": "t1", "hostname": HOST, "timestamp": 1000.0, **fields}) == (
        expected
    )


@pytest.mark.parametrize("timestamp", ["soon", True, float("nan"), None])
def test_a_start_without_a_usable_time_is_a_start_all_the_same(timestamp: object) -> None:
    assert parse_task_event(task_event("task-started", timestamp=timestamp)) == TaskEvent(
        "task-started", "t1", HOST
    )


def test_task_sent_is_no_event_to_count() -> None:
    assert parse_task_event({"type": "task-sent"}) is None


def test_an_eta_in_kombu_json_encoding_is_read() -> None:
    eta = {"__type__": "datetime", "__value__": "1970-01-01T00:16:30+00:00"}
    event = task_event("task-received", name="app.add", sent_at=900.0, eta=eta)

    parsed = parse_task_event(event)

    assert parsed is not None
    assert parsed.ready_at == 990.0


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"uuid": "t1", "hostname": HOST}, DROP_MALFORMED),
        ({"type": 7, "uuid": "t1", "hostname": HOST}, DROP_MALFORMED),
        ({"type": "task-received", "hostname": HOST, "name": "a"}, DROP_MALFORMED),
        ({"type": "task-received", "uuid": "", "hostname": HOST, "name": "a"}, DROP_MALFORMED),
        ({"type": "task-received", "uuid": "t1", "name": "a"}, DROP_MALFORMED),
        ({"type": "task-received", "uuid": 5, "hostname": HOST, "name": "a"}, DROP_MALFORMED),
        ({"type": "task-exploded", "uuid": "t1", "hostname": HOST}, DROP_UNKNOWN_TYPE),
        ({"type": "task-replaced", "uuid": "t1", "hostname": HOST}, DROP_UNKNOWN_TYPE),
        ({"type": "task-received", "uuid": "t1", "hostname": HOST}, DROP_INVALID_FIELD),
        (task_event("task-received", name=""), DROP_INVALID_FIELD),
        (task_event("task-received", name=["a"]), DROP_INVALID_FIELD),
        (task_event("task-received", name="a" * 300), DROP_INVALID_FIELD),
        (task_event("task-received", name="bad\udc80"), DROP_INVALID_FIELD),
        ({**task_event("task-received", name="a"), "hostname": "h" * 300}, DROP_INVALID_FIELD),
        (task_event("task-received", name="a", queue=3), DROP_INVALID_FIELD),
        (task_event("task-received", name="a", queue="q" * 300), DROP_INVALID_FIELD),
        (task_event("task-received", name="a", sent_at="yesterday"), DROP_INVALID_FIELD),
        (task_event("task-received", name="a", sent_at=float("nan")), DROP_INVALID_FIELD),
        (task_event("task-received", name="a", sent_at=1.0, eta="soon"), DROP_INVALID_FIELD),
        (task_event("task-received", name="a", sent_at=1.0, eta=["x"]), DROP_INVALID_FIELD),
        (task_event("task-succeeded", runtime="fast"), DROP_INVALID_FIELD),
        (task_event("task-succeeded", runtime=float("inf")), DROP_INVALID_FIELD),
        (task_event("task-revoked", name="a" * 300), DROP_INVALID_FIELD),
    ],
)
def test_unusable_events_raise_their_drop_reason(event: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        parse_task_event(event)

    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("sent_at", "eta", "expected"),
    [
        (None, "2030-01-01T00:00:00+00:00", None),  # no publish time: no wait to measure
        (900.0, None, 900.0),
        (900.0, "", 900.0),
        (900.0, "1970-01-01T00:16:30+00:00", 990.0),  # due after it was published
        (900.0, "1970-01-01T00:16:30", 990.0),  # naive: UTC
        (995.0, 990.0, 995.0),  # due before it was published
        (900, None, 900.0),
    ],
)
def test_a_task_is_ready_when_published_or_at_its_eta_if_later(
    sent_at: object, eta: object, expected: float | None
) -> None:
    assert ready_at(sent_at, eta) == expected


@pytest.mark.parametrize("value", [True, "1.0", float("nan"), float("-inf")])
def test_numbers_are_finite_ints_or_floats_only(value: object) -> None:
    with pytest.raises(InvalidEvent):
        optional_number(value)


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (None, 0), ("3", 0), (True, 0)])
def test_retries_are_counted_from_ints_only(value: object, expected: int) -> None:
    assert retry_count(value) == expected


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


def test_an_exception_label_is_unknown_without_a_readable_repr_of_bounded_length() -> None:
    assert exception_label(None) == "unknown"
    assert exception_label("E" * 300 + "()") == "unknown"
    assert exception_label("E" * 256 + "()") == "E" * 256
