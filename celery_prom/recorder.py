"""Turns Celery task events into updates of the task store.

The same recorder is fed in-process by the worker's event tap and over the broker by the
exporter's event receiver, so both endpoints count with identical semantics.

Task events carry a task id but not always the task name or queue; those come with
``task-received`` and are remembered per *attempt*. A retry re-delivers the same task id,
and the new message can be received before the old attempt reports ``task-retried``, so
attempts are kept in arrival order per (hostname, task id) rather than one per id.

``Task.replace`` reuses the task id too: it sends the replacement (often another task,
so another name) and ends the running attempt by raising ``Ignore``, for which Celery
sends no event. Only the worker sees that ending, and reports it as an event of its own
(``task-replaced``); the replacement is an attempt of its own, counted under its own name.

Events arrive as ``TaskEvent``, their fields already checked where they were built (see
``celery_prom.task_event``); what is left to drop here is what only the history of a task
can tell: an outcome of a task never received, one reported twice, one evicted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from celery_prom import metrics
from celery_prom.metrics import new_family
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
from celery_prom.task_event import (
    DROP_UNKNOWN_TYPE,
    TASK_IGNORED,
    TASK_REPLACED,
    InvalidEvent,
    TaskEvent,
)

# Why an event was not counted, beyond what its fields tell (celery_prom.task_event):
DROP_UNKNOWN_TASK = "unknown_task"  # refers to a task whose task-received was never seen
DROP_DUPLICATE = "duplicate"  # the same outcome reported twice for one execution
DROP_EVICTED = "evicted"  # an unfinished task forgotten to keep memory bounded
# (The exporter drops events for reasons of its own: see celery_prom.exporter.dropped.)

#: Endings the worker reports that Celery sends no event for: not events received.
_WITHOUT_EVENT = frozenset({TASK_REPLACED, TASK_IGNORED})
_SIMPLE_COUNTERS: Mapping[str, int] = {
    "task-retried": RETRIED,
    "task-revoked": REVOKED,
    "task-rejected": REJECTED,
    TASK_REPLACED: REPLACED,
    TASK_IGNORED: IGNORED,
}


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
        self._handlers: dict[str, Callable[[tuple[str, str], TaskEvent], None]] = {
            "task-received": self._on_received,
            "task-started": self._on_started,
            "task-succeeded": self._on_succeeded,
            "task-failed": self._on_failed,
            "task-retried": self._on_simple_outcome,
            "task-revoked": self._on_simple_outcome,
            "task-rejected": self._on_simple_outcome,
            "task-cancelled": self._on_cancelled,
            TASK_REPLACED: self._on_simple_outcome,
            TASK_IGNORED: self._on_simple_outcome,
        }

    def record(self, event: TaskEvent) -> None:
        """Apply one task event to its task's attempts, counting what it ends in the store."""
        with self._lock:
            if event.type not in _WITHOUT_EVENT:
                self.stats.received += 1
            handler = self._handlers.get(event.type)
            try:
                if handler is None:
                    raise InvalidEvent(DROP_UNKNOWN_TYPE)
                handler((event.hostname, event.uuid), event)
            except InvalidEvent as invalid:
                self.stats.drop(invalid.reason)

    def count_invalid(self, reason: str) -> None:
        """An event received that no ``TaskEvent`` could be built from (``InvalidEvent``)."""
        with self._lock:
            self.stats.received += 1
            self.stats.drop(reason)

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

    # -- events ----------------------------------------------------------------------------

    def _on_received(self, task: tuple[str, str], event: TaskEvent) -> None:
        attempt = _Attempt(_series_key(event), event.ready_at, event.retries)
        attempts = self._in_flight.get(task)
        if attempts is None:
            if len(self._in_flight) >= self._max_in_flight:
                self._evict_oldest()
            attempts = self._in_flight[task] = []
        else:
            _mark_replaced(attempts, attempt.retries)
        attempts.append(attempt)
        self.store.count(attempt.key, RECEIVED)

    def _on_started(self, task: tuple[str, str], event: TaskEvent) -> None:
        attempt = self._first_waiting(task)
        if attempt is None:
            raise InvalidEvent(DROP_UNKNOWN_TASK)
        wait = None
        if attempt.ready_at is not None and event.timestamp is not None:
            wait = max(0.0, event.timestamp - attempt.ready_at)
        attempt.started = True
        self.store.count_start(attempt.key, wait, task_id=task[1])

    def _on_succeeded(self, task: tuple[str, str], event: TaskEvent) -> None:
        key = self._finish(task, event)
        if key is not None:
            runtime = event.runtime
            self.store.count_success(
                key, None if runtime is None else max(0.0, runtime), task_id=task[1]
            )

    def _on_failed(self, task: tuple[str, str], event: TaskEvent) -> None:
        key = self._finish(task, event)
        if key is not None:
            self.store.count_failure(key, event.exception)

    def _on_simple_outcome(self, task: tuple[str, str], event: TaskEvent) -> None:
        key = self._finish(task, event)
        if key is not None:
            self.store.count(key, _SIMPLE_COUNTERS[event.type])

    def _on_cancelled(self, task: tuple[str, str], event: TaskEvent) -> None:
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
        if outcome not in _WITHOUT_EVENT:
            for index in started:
                if not attempts[index].replaced:
                    return attempts.pop(index)
        return attempts.pop(started[0])

    def _finish(self, task: tuple[str, str], event: TaskEvent) -> SeriesKey | None:
        """The series an outcome belongs to, or None when it was already counted."""
        outcome = event.type
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
        # The worker tap names tasks that were never received (revoked on arrival,
        # unregistered task names), so they still count under their own name.
        key = _series_key(event)
        self._remember_finished(task, key, outcome)
        return key

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


def _series_key(event: TaskEvent) -> SeriesKey:
    """The labels of an event's task; an event that does not name its task is of a task
    that cannot be known."""
    if event.name is None:
        raise InvalidEvent(DROP_UNKNOWN_TASK)
    return event.name, event.hostname, event.queue


def _mark_replaced(attempts: list[_Attempt], retries: int) -> None:
    """A new delivery of a task id arrived: the started attempts it does not retry (Celery
    counts retries up) were replaced. (A redelivered unacknowledged message is taken for a
    replacement too; it is of the same series, so no count moves.)"""
    for attempt in attempts:
        if attempt.started and attempt.retries >= retries:
            attempt.replaced = True
