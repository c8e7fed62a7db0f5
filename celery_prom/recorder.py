"""Turns Celery task events into updates of the task store.

The same recorder is fed in-process by the worker's event tap and over the broker by the
exporter's event receiver, so both endpoints count with identical semantics.

Task events carry a task id but not always the task name or queue; those come with
``task-received`` and are remembered per *attempt*. A retry re-delivers the same task id,
and the new message can be received before the old attempt reports ``task-retried``, so
attempts are kept in arrival order per (hostname, task id) rather than one per id.

``Task.replace`` reuses the task id too: it sends the replacement (often another task,
so another name) and ends the running attempt by raising ``Ignore``, for which Celery
sends no event. Only the worker sees that ending, and reports it with ``record_ignored``;
the replacement is an attempt of its own, counted under its own name.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from celery_prom import metrics
from celery_prom.metrics import MAX_LABEL_VALUE_LENGTH, new_family
from celery_prom.store import (
    IGNORED,
    RECEIVED,
    REJECTED,
    REPLACED,
    RETRIED,
    REVOKED,
    SeriesKey,
    TaskStore,
)

#: Field the worker's tap adds to the task events it passes on, so an exporter receiving them
#: knows this worker already counts its own tasks and does not count them a second time.
RECORDED_MARK = "celery_prom"
DEFAULT_QUEUE = "celery"
UNKNOWN_EXCEPTION = "unknown"

# Why an event was not counted; the values of celery_prom_events_dropped_total{reason}.
DROP_MALFORMED = "malformed"  # not a mapping, or no usable type / uuid / hostname
DROP_INVALID_FIELD = "invalid_field"  # a field of the wrong type, or a label too long
DROP_UNKNOWN_TYPE = "unknown_type"  # not a task event type we know
DROP_UNKNOWN_TASK = "unknown_task"  # refers to a task whose task-received was never seen
DROP_DUPLICATE = "duplicate"  # the same outcome reported twice for one execution
DROP_EVICTED = "evicted"  # an unfinished task forgotten to keep memory bounded
# (The exporter drops events for reasons of its own: see celery_prom.exporter.dropped.)

_CLASS_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\(")
_UNPICKLEABLE = re.compile(r"UnpickleableExceptionWrapper\('[^']*',\s*'([A-Za-z_][\w.]*)'")
# Wrappers whose repr hides the real exception: nothing to recover from the text alone.
_OPAQUE_WRAPPERS = frozenset({"ExceptionWithTraceback", "ExceptionInfo"})

_NOT_COUNTED = frozenset({"task-sent"})
# Endings Celery sends no event for (an attempt that raised Ignore); named like events
# so that they share the bookkeeping of the outcomes Celery does report.
_REPLACED = "task-replaced"
_IGNORED = "task-ignored"
_SIMPLE_COUNTERS: Mapping[str, int] = {
    "task-retried": RETRIED,
    "task-revoked": REVOKED,
    "task-rejected": REJECTED,
    _REPLACED: REPLACED,
    _IGNORED: IGNORED,
}


class InvalidEvent(Exception):
    """An event that cannot be counted; ``reason`` labels the drop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Attempt:
    """One delivery of a task to a worker, from task-received to its outcome."""

    key: SeriesKey
    ready_at: float | None
    retries: int
    started: bool = False
    #: A later delivery of the same task id that is no retry followed it while it ran: it
    #: was replaced, so it ends by raising Ignore, not with the outcomes Celery reports.
    replaced: bool = False


@dataclass(slots=True)
class _Finished:
    key: SeriesKey
    outcomes: set[str] = field(default_factory=set)


@dataclass
class RecorderStats:
    """Events received, and those of them (or others) dropped, by reason."""

    received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, events: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + events

    def copy(self) -> RecorderStats:
        return RecorderStats(self.received, dict(self.dropped))

    def merged(self, other: RecorderStats) -> RecorderStats:
        total = self.copy()
        total.received += other.received
        for reason, events in other.dropped.items():
            total.drop(reason, events)
        return total

    def families(self) -> Iterator[Metric]:
        """``celery_prom_events_received_total`` and ``celery_prom_events_dropped_total``."""
        received = new_family(metrics.EVENTS_RECEIVED, CounterMetricFamily)
        received.add_metric((), self.received)
        yield received
        dropped = new_family(metrics.EVENTS_DROPPED, CounterMetricFamily)
        for reason, events in sorted(self.dropped.items()):
            dropped.add_metric((reason,), events)
        yield dropped


class Recorder:
    """Counts task events into a ``TaskStore``. ``record`` never raises."""

    def __init__(
        self,
        store: TaskStore,
        max_in_flight: int = 100_000,
        dedupe_window: int = 10_000,
    ) -> None:
        self.store = store
        self.stats = RecorderStats()
        self._max_in_flight = max_in_flight
        self._dedupe_window = dedupe_window
        self._in_flight: dict[tuple[str, str], list[_Attempt]] = {}
        # Insertion-ordered, oldest first: a plain dict is cheaper than an OrderedDict here.
        self._finished: dict[tuple[str, str], _Finished] = {}
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[tuple[str, str], Mapping[str, Any]], None]] = {
            "task-received": self._on_received,
            "task-started": self._on_started,
            "task-succeeded": self._on_succeeded,
            "task-failed": self._on_failed,
            "task-retried": self._on_simple_outcome,
            "task-revoked": self._on_simple_outcome,
            "task-rejected": self._on_simple_outcome,
            "task-cancelled": self._on_cancelled,
        }

    def record(self, event: object) -> None:
        with self._lock:
            self.stats.received += 1
            try:
                self._dispatch(event)
            except InvalidEvent as invalid:
                self.stats.drop(invalid.reason)

    def record_from_worker(self, hostname: str, event: Mapping[str, Any]) -> None:
        """Record a task event from inside the worker (the tap); never raises.

        The worker's own events are well-formed dicts: the checks ``record`` makes of
        events from the broker are skipped, every decision after them is the same.
        """
        with self._lock:
            self.stats.received += 1
            uuid = event.get("uuid")
            handler = self._handlers.get(event["type"])
            try:
                if handler is None or not isinstance(uuid, str):
                    raise InvalidEvent(DROP_UNKNOWN_TYPE if handler is None else DROP_MALFORMED)
                handler((hostname, uuid), event)
            except InvalidEvent as invalid:
                self.stats.drop(invalid.reason)

    def record_ignored(self, hostname: str, uuid: str, replaced: bool) -> None:
        """Count an attempt that ended by raising ``Ignore`` (``Task.replace`` when
        ``replaced``); never raises. Celery reports such an ending with no event at all.
        """
        with self._lock:
            try:
                self._on_simple_outcome(
                    (hostname, uuid), {"type": _REPLACED if replaced else _IGNORED}
                )
            except InvalidEvent as invalid:
                self.stats.drop(invalid.reason)

    def forget_hostname(self, hostname: str) -> None:
        """Forget unfinished tasks of a worker that went away."""
        with self._lock:
            for table in (self._in_flight, self._finished):
                for key in [k for k in table if k[0] == hostname]:
                    del table[key]

    def counts(self) -> RecorderStats:
        """A copy of the event counts, consistent with one another."""
        with self._lock:
            return self.stats.copy()

    def collect(self) -> Iterator[Metric]:
        return self.counts().families()

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, event: object) -> None:
        # (The exact-type test first: isinstance against an ABC costs on every event.)
        if type(event) is not dict and not isinstance(event, Mapping):
            raise InvalidEvent(DROP_MALFORMED)
        event_type = event.get("type")
        if not isinstance(event_type, str):
            raise InvalidEvent(DROP_MALFORMED)
        if event_type in _NOT_COUNTED:
            return
        handler = self._handlers.get(event_type)
        if handler is None:
            raise InvalidEvent(DROP_UNKNOWN_TYPE)
        uuid = event.get("uuid")
        hostname = event.get("hostname")
        if not isinstance(uuid, str) or not uuid or not isinstance(hostname, str):
            raise InvalidEvent(DROP_MALFORMED)
        handler((hostname, uuid), event)

    def _on_received(self, task: tuple[str, str], event: Mapping[str, Any]) -> None:
        attempt = _Attempt(_series_key(task[0], event), _ready_at(event), _retries(event))
        attempts = self._in_flight.get(task)
        if attempts is None:
            if len(self._in_flight) >= self._max_in_flight:
                self._evict_oldest()
            attempts = self._in_flight[task] = []
        else:
            _mark_replaced(attempts, attempt.retries)
        attempts.append(attempt)
        self.store.count(attempt.key, RECEIVED)

    def _on_started(self, task: tuple[str, str], event: Mapping[str, Any]) -> None:
        attempt = self._first_waiting(task)
        if attempt is None:
            raise InvalidEvent(DROP_UNKNOWN_TASK)
        wait = None
        if attempt.ready_at is not None:
            wait = max(0.0, _timestamp(event) - attempt.ready_at)
        attempt.started = True
        self.store.count_start(attempt.key, wait, task_id=task[1])

    def _on_succeeded(self, task: tuple[str, str], event: Mapping[str, Any]) -> None:
        runtime = _optional_number(event, "runtime")
        key = self._finish(task, event)
        if key is not None:
            self.store.count_success(
                key, None if runtime is None else max(0.0, runtime), task_id=task[1]
            )

    def _on_failed(self, task: tuple[str, str], event: Mapping[str, Any]) -> None:
        exception = _exception_label(event)
        key = self._finish(task, event)
        if key is not None:
            self.store.count_failure(key, exception)

    def _on_simple_outcome(self, task: tuple[str, str], event: Mapping[str, Any]) -> None:
        key = self._finish(task, event)
        if key is not None:
            self.store.count(key, _SIMPLE_COUNTERS[event["type"]])

    def _on_cancelled(self, task: tuple[str, str], event: Mapping[str, Any]) -> None:
        # A cancelled task (connection lost mid-run) is redelivered and counted then.
        self._finish(task, event)

    # -- attempt bookkeeping ---------------------------------------------------------------

    def _first_waiting(self, task: tuple[str, str]) -> _Attempt | None:
        for attempt in self._in_flight.get(task, ()):
            if not attempt.started:
                return attempt
        return None

    def _take_attempt(
        self, task: tuple[str, str], attempts: list[_Attempt], outcome: str
    ) -> _Attempt:
        """Remove and return the attempt an outcome ends: the oldest started, else the oldest.

        Outcomes other than Ignore's pass over replaced attempts while a started attempt
        that was not replaced is in flight: the replacement can end (its outcome is
        reported) before the main process learns that the attempt it replaced raised.
        """
        if len(attempts) == 1:  # nearly always: one delivery of the task in flight
            del self._in_flight[task]
            return attempts[0]
        started = [index for index, attempt in enumerate(attempts) if attempt.started]
        if not started:
            return attempts.pop(0)
        if outcome not in (_REPLACED, _IGNORED):
            for index in started:
                if not attempts[index].replaced:
                    return attempts.pop(index)
        return attempts.pop(started[0])

    def _finish(self, task: tuple[str, str], event: Mapping[str, Any]) -> SeriesKey | None:
        """The series an outcome belongs to, or None when it was already counted."""
        outcome = event["type"]
        attempts = self._in_flight.get(task)
        if attempts:
            attempt = self._take_attempt(task, attempts, outcome)
            # Celery reports nothing after a success; other outcomes can be reported twice
            # (or be followed by a rejection), so only those are remembered.
            if outcome != "task-succeeded":
                self._remember_finished(task, attempt.key, outcome)
            return attempt.key
        finished = self._finished.get(task)
        if finished is not None:
            # e.g. a hard time limit reports task-failed twice for one execution, while
            # Reject(requeue=False) legitimately reports task-failed and task-rejected.
            if outcome in finished.outcomes:
                raise InvalidEvent(DROP_DUPLICATE)
            finished.outcomes.add(outcome)
            return finished.key
        if isinstance(event.get("name"), str):
            # The worker tap names tasks that were never received (revoked on arrival,
            # unregistered task names), so they still count under their own name.
            key = _series_key(task[0], event)
            self._remember_finished(task, key, outcome)
            return key
        raise InvalidEvent(DROP_UNKNOWN_TASK)

    def _remember_finished(self, task: tuple[str, str], key: SeriesKey, outcome: str) -> None:
        finished = self._finished
        if task in finished:  # re-inserted so that it counts as the newest
            del finished[task]
        finished[task] = _Finished(key, {outcome})
        if len(finished) > self._dedupe_window:
            del finished[next(iter(finished))]

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._in_flight))
        del self._in_flight[oldest]
        self.stats.drop(DROP_EVICTED)


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


def _exception_label(event: Mapping[str, Any]) -> str:
    # The worker tap knows the real class (from the pool's result, or task_failure).
    exact = event.get("exception_type")
    if isinstance(exact, str) and exact:
        return _label(exact)
    text = event.get("exception")
    if not isinstance(text, str):
        return UNKNOWN_EXCEPTION
    return _label(exception_class_name(text[: MAX_LABEL_VALUE_LENGTH + 1]))


def _series_key(hostname: str, event: Mapping[str, Any]) -> SeriesKey:
    """The labels of an event's task; the only place label values enter the store."""
    name = event.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidEvent(DROP_INVALID_FIELD)
    queue = event.get("queue")
    if queue is None or queue == "":
        queue = DEFAULT_QUEUE
    elif not isinstance(queue, str):
        raise InvalidEvent(DROP_INVALID_FIELD)
    return _label(name), _label(hostname), _label(queue)


def _label(value: str) -> str:
    """A label value that renders safely: bounded length, encodable as UTF-8."""
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise InvalidEvent(DROP_INVALID_FIELD)
    if not value.isascii():  # ASCII is always valid UTF-8, and far cheaper to check
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(DROP_INVALID_FIELD) from None
    return value


def _mark_replaced(attempts: list[_Attempt], retries: int) -> None:
    """A new delivery of a task id arrived: the started attempts it does not retry (Celery
    counts retries up) were replaced. (A redelivered unacknowledged message is taken for a
    replacement too; it is of the same series, so no count moves.)"""
    for attempt in attempts:
        if attempt.started and attempt.retries >= retries:
            attempt.replaced = True


def _retries(event: Mapping[str, Any]) -> int:
    """How many times the delivered task was retried before; 0 when the event does not say."""
    retries = event.get("retries")
    return retries if type(retries) is int else 0


def _ready_at(event: Mapping[str, Any]) -> float | None:
    """When the task became runnable: its publish time, or its ETA if that is later."""
    sent_at = _optional_number(event, "sent_at")
    if sent_at is None:
        return None
    eta = event.get("eta")
    if eta is None:
        return sent_at
    eta = _eta_timestamp(eta)
    return sent_at if eta is None else max(sent_at, eta)


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


def _timestamp(event: Mapping[str, Any]) -> float:
    value = _optional_number(event, "timestamp")
    if value is None:
        raise InvalidEvent(DROP_INVALID_FIELD)
    return value


def _optional_number(event: Mapping[str, Any], field_name: str) -> float | None:
    value = event.get(field_name)
    if value is None:
        return None
    # Exact types: a bool is an int to isinstance, but never a number here.
    if type(value) is float or type(value) is int:
        number = float(value)
        if math.isfinite(number):
            return number
    raise InvalidEvent(DROP_INVALID_FIELD)
