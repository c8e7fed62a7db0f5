"""The typed task event the recorder counts, and the checks that build it from Celery's fields.

Each feed builds a ``TaskEvent`` at its boundary: the worker's tap from the fields Celery
hands its event dispatcher (trusted, but for what it read from the message being handled), the
exporter's router from the dicts it decodes off the broker (anything at all, hence
``parse_task_event``). Every check of a field is here; a field that fails one raises
``InvalidEvent`` with the reason the event is dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery_prom.metrics import MAX_LABEL_VALUE_LENGTH

#: Field the worker's tap adds to the task events it passes on, so an exporter receiving them
#: knows this worker already counts its own tasks and does not count them a second time.
RECORDED_MARK = "celery_prom"
DEFAULT_QUEUE = "celery"
UNKNOWN_EXCEPTION = "unknown"

# Why an event could not be read; values of celery_prom_events_dropped_total{reason}.
DROP_MALFORMED = "malformed"  # not a mapping, or no usable type / uuid / hostname
DROP_INVALID_FIELD = "invalid_field"  # a field of the wrong type, or a label too long
DROP_UNKNOWN_TYPE = "unknown_type"  # not a task event type we know
# (The recorder drops events for reasons of its own: see celery_prom.recorder.)

# Endings Celery sends no event for (an attempt that raised Ignore); only the worker sees
# them, and its tap reports them as events of these types.
TASK_REPLACED = "task-replaced"
TASK_IGNORED = "task-ignored"
#: The task events Celery sends that the recorder counts.
CELERY_TASK_EVENTS = frozenset(
    {
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
        "task-cancelled",
    }
)
#: Task events that are received but say nothing about an attempt (sent by the client).
NOT_COUNTED = frozenset({"task-sent"})

_CLASS_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\(")
_UNPICKLEABLE = re.compile(r"UnpickleableExceptionWrapper\('[^']*',\s*'([A-Za-z_][\w.]*)'")
# Wrappers whose repr hides the real exception: nothing to recover from the text alone.
_OPAQUE_WRAPPERS = frozenset({"ExceptionWithTraceback", "ExceptionInfo"})


class InvalidEvent(Exception):
    """An event that cannot be counted; ``reason`` labels the drop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class TaskEvent:
    """One task event, every field checked. Label values (``hostname``, ``name``, ``queue``,
    ``exception``) are bounded in length and encodable as UTF-8."""

    type: str
    uuid: str
    hostname: str
    #: The task's name, where the event says it (``task-received``; the tap's events of tasks
    #: that end without being received).
    name: str | None = None
    queue: str = DEFAULT_QUEUE
    #: ``task-received``: when the task became runnable (its publish time, or its ETA if that
    #: is later), and how many times it was retried before.
    ready_at: float | None = None
    retries: int = 0
    #: ``task-started``: when it started, if the event says so usably.
    timestamp: float | None = None
    #: ``task-succeeded``: how long it ran.
    runtime: float | None = None
    #: ``task-failed``: the class name of the exception it raised.
    exception: str = UNKNOWN_EXCEPTION


def parse_task_event(event: Mapping[str, Any], queue: str = DEFAULT_QUEUE) -> TaskEvent | None:
    """The task event a decoded broker message describes, or None for a type that is not
    counted (``task-sent``); ``queue`` is the one to assume where a ``task-received`` names
    none (Celery's never does)."""
    event_type = event.get("type")
    if not isinstance(event_type, str):
        raise InvalidEvent(DROP_MALFORMED)
    if event_type in NOT_COUNTED:
        return None
    if event_type not in CELERY_TASK_EVENTS:
        raise InvalidEvent(DROP_UNKNOWN_TYPE)
    uuid = event.get("uuid")
    hostname = event.get("hostname")
    if not isinstance(uuid, str) or not uuid or not isinstance(hostname, str):
        raise InvalidEvent(DROP_MALFORMED)
    parsed = TaskEvent(event_type, uuid, label(hostname))
    if event_type == "task-received" or isinstance(event.get("name"), str):
        parsed.name = task_name(event.get("name"))
        parsed.queue = queue_name(event.get("queue"), queue)
    if event_type == "task-received":
        parsed.ready_at = ready_at(event.get("sent_at"), _kombu_datetime(event.get("eta")))
        parsed.retries = retry_count(event.get("retries"))
    elif event_type == "task-started":
        parsed.timestamp = _start_time(event.get("timestamp"))
    elif event_type == "task-succeeded":
        parsed.runtime = optional_number(event.get("runtime"))
    elif event_type == "task-failed":
        parsed.exception = exception_label(event.get("exception"))
    return parsed


# -- fields ----------------------------------------------------------------------------------


def label(value: str) -> str:
    """A label value that renders safely: bounded length, encodable as UTF-8."""
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise InvalidEvent(DROP_INVALID_FIELD)
    if not value.isascii():  # ASCII is always valid UTF-8, and far cheaper to check
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(DROP_INVALID_FIELD) from None
    return value


def task_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(DROP_INVALID_FIELD)
    return label(value)


def queue_name(value: object, default: str = DEFAULT_QUEUE) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise InvalidEvent(DROP_INVALID_FIELD)
    return label(value)


def optional_number(value: object) -> float | None:
    """A finite number, or None for no value."""
    if value is None:
        return None
    # Exact types: a bool is an int to isinstance, but never a number here.
    if type(value) is float or type(value) is int:
        number = float(value)
        if math.isfinite(number):
            return number
    raise InvalidEvent(DROP_INVALID_FIELD)


def retry_count(value: object) -> int:
    """How many times the delivered task was retried before; 0 when the event does not say."""
    return value if type(value) is int else 0


def ready_at(sent_at: object, eta: object) -> float | None:
    """When the task became runnable: its publish time, or its ETA if that is later."""
    published = optional_number(sent_at)
    if published is None:
        return None
    due = _eta_timestamp(eta)
    return published if due is None else max(published, due)


def exception_label(text: object) -> str:
    """The exception class a ``task-failed`` event's ``repr`` names, as a label value."""
    if not isinstance(text, str):
        return UNKNOWN_EXCEPTION
    return label(exception_class_name(text[: MAX_LABEL_VALUE_LENGTH + 1]))


def exception_class_name(text: str) -> str:
    """The class name in an exception's repr (``ValueError('x')`` -> ``ValueError``).

    Task events carry ``repr(exception)``, never the class; reprs a class name cannot be
    read from (custom ``__repr__``, billiard's opaque wrappers) give ``unknown``.
    """
    wrapped = _UNPICKLEABLE.match(text)
    if wrapped:
        return wrapped.group(1).rpartition(".")[2]
    match = _CLASS_NAME.match(text)
    if match is None:
        return UNKNOWN_EXCEPTION
    name = match.group(1).rpartition(".")[2]
    return UNKNOWN_EXCEPTION if name in _OPAQUE_WRAPPERS else name


def _start_time(value: object) -> float | None:
    # A task whose start time is unusable still started: it is counted (or, never received,
    # dropped as unknown), only its queue wait goes unmeasured.
    try:
        return optional_number(value)
    except InvalidEvent:
        return None


def _kombu_datetime(value: object) -> object:
    # kombu's JSON encodes a datetime as {"__type__": "datetime", "__value__": isoformat}.
    return value.get("__value__") if isinstance(value, dict) else value


def _eta_timestamp(eta: object) -> float | None:
    if eta is None or eta == "":
        return None
    if isinstance(eta, (int, float)) and not isinstance(eta, bool):
        return float(eta)
    if not isinstance(eta, str):
        raise InvalidEvent(DROP_INVALID_FIELD)
    try:
        moment = datetime.fromisoformat(eta)
    except ValueError:
        raise InvalidEvent(DROP_INVALID_FIELD) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
