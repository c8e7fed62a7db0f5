"""The consumer step that feeds the worker's own task events to the recorder.

Celery's worker main process reports every task outcome through its event dispatcher, for
every pool, whether or not task events are enabled. ``EventTap`` stands in for that
dispatcher: it records each task event in-process, as a ``TaskEvent`` built from the fields
Celery passes, and then passes the fields on, so the dispatcher still publishes what it would
have (nothing when events are off), marked as recorded and with the queue of
``task-received``.

Three things the events themselves do not say are added to the ``TaskEvent`` here:

* the queue and publish time of a message, read from the message while the consumer
  handles it (``ArrivalLog``);
* the real exception class of failures, whose event text is only a ``repr`` (``FailureLog``):
  read from the pool's result by ``results.ResultWatch``, or from ``task_failure`` for
  failures the main process detects itself (lost pool children, hard time limits);
* task names for tasks that end without being received (revoked on arrival, unregistered
  names), again from the message being handled.

``ResultWatch`` also reports the attempts that end by raising ``Ignore`` (as
``Task.replace`` makes them), which no event reports at all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import celery
from celery import bootsteps, signals
from celery.worker import state as worker_state

from celery_prom import faults
from celery_prom.bootsteps.results import ResultWatch
from celery_prom.bootsteps.worker_state import (
    INVALID_TASK,
    INVALID_UNDECODABLE,
    INVALID_UNRECOGNIZED,
    MessageTally,
    scheduled_requests,
)
from celery_prom.faults import Faults
from celery_prom.producer import SENT_AT_HEADER
from celery_prom.recorder import Recorder
from celery_prom.task_event import (
    DEFAULT_QUEUE,
    RECORDED_MARK,
    TASK_IGNORED,
    TASK_REPLACED,
    InvalidEvent,
    TaskEvent,
    exception_label,
    label,
    queue_name,
    ready_at,
    retry_count,
    task_name,
)

logger = logging.getLogger(__name__)

#: Attribute of the worker (``WorkController``) holding its ``WorkerMetrics``.
METRICS_ATTRIBUTE = "celery_prom"
#: Events of tasks whose attempt the recorder knows already: no need for the message.
_MID_FLIGHT = frozenset({"task-started", "task-succeeded", "task-retried"})
#: Failures reported by the main process but never followed by an event stay this long.
_FAILURE_LOG_SIZE = 1024


class Arrival(NamedTuple):
    name: object
    queue: str
    sent_at: object


class ArrivalLog:
    """What the message being handled says about its task, keyed by task id."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._arrivals: dict[object, Arrival] = {}
        #: The arrival of a task id, if its message is being handled (the dict's own get,
        #: called for most task events).
        self.get: Callable[[object], Arrival | None] = self._arrivals.get

    def wrap(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        arrivals = self._arrivals

        def on_task_message(message: Any) -> Any:
            try:
                task_id, arrival = _arrival_of(message)
            except Exception as error:  # noqa: BLE001 - the message is handled all the same
                self._faults.record(faults.TAP, error)
                return handler(message)
            if task_id is None:
                return handler(message)  # not a task message we can attribute
            arrivals[task_id] = arrival
            try:
                return handler(message)
            finally:
                arrivals.pop(task_id, None)

        return on_task_message


def _arrival_of(message: Any) -> tuple[str | None, Arrival]:
    headers = message.headers
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if not isinstance(task_id, str):
        return None, Arrival(None, DEFAULT_QUEUE, None)
    delivery = message.delivery_info or {}
    arrival = Arrival(
        headers.get("task"),
        delivery.get("routing_key") or DEFAULT_QUEUE,
        headers.get(SENT_AT_HEADER),
    )
    return task_id, arrival


class FailureLog:
    """Exception class names of failures, until their ``task-failed`` event arrives."""

    def __init__(self) -> None:
        self._names: OrderedDict[object, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, task_id: object, exception: BaseException) -> None:
        # An exception that could not be pickled travels wrapped, naming its real class.
        name = getattr(exception, "exc_cls_name", None) or type(exception).__name__
        with self._lock:
            self._names[task_id] = str(name)
            while len(self._names) > _FAILURE_LOG_SIZE:
                self._names.popitem(last=False)

    def pop(self, task_id: object) -> str | None:
        with self._lock:
            return self._names.pop(task_id, None)


class NoDispatcher:
    """What the tap forwards to when the worker runs without any event dispatcher
    (``--without-heartbeat --without-gossip`` and no ``-E``): a dispatcher that is off."""

    enabled = False
    connection = None

    def __init__(self) -> None:
        self.groups: set[str] = set()

    def send(self, *args: Any, **kwargs: Any) -> None:
        return None

    def flush(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None


class EventTap:
    """An event dispatcher stand-in: records task events, then forwards everything."""

    #: Always on, so requests and strategies report to the tap even when the dispatcher
    #: they would otherwise use is disabled; forwarding checks the real one.
    enabled = True

    def __init__(
        self,
        dispatcher: Any,
        recorder: Recorder,
        *,
        hostname: str,
        arrivals: ArrivalLog,
        failures: FailureLog,
        faults: Faults,
    ) -> None:
        self.dispatcher = dispatcher
        self._forward_to = NoDispatcher() if dispatcher is None else dispatcher
        self._recorder = recorder
        # Checked once: a hostname that cannot be a label value leaves the tap uninstalled.
        self._hostname = label(hostname)
        self._arrivals = arrivals
        self._failures = failures
        self._faults = faults

    def send(self, type: str, **fields: Any) -> Any:  # Celery's signature
        dispatcher = self._forward_to
        if type.startswith("task-"):
            event = None
            try:
                event = self._event(type, fields)
                self._recorder.record(event)
            except InvalidEvent as invalid:
                self._recorder.count_invalid(invalid.reason)
            except Exception as error:  # noqa: BLE001 - the task's own reporting goes on
                self._faults.record(faults.TAP, error)
            # Most workers run without -E: their dispatcher drops task events (or is off), so
            # skip the call rather than re-pack every event's arguments for nothing.
            groups = dispatcher.groups
            if not dispatcher.enabled or (groups and "task" not in groups):
                return None
            if type == "task-received" and event is not None:
                fields["queue"] = event.queue  # for Flower and other consumers of the events
            fields[RECORDED_MARK] = True
        if dispatcher.enabled:
            return dispatcher.send(type, **fields)
        return None

    def record_ignored(self, task_id: str, replaced: bool) -> None:
        """An attempt that ended by raising ``Ignore`` (``Task.replace`` when ``replaced``):
        Celery reports such an ending with no event at all."""
        self._recorder.record(
            TaskEvent(TASK_REPLACED if replaced else TASK_IGNORED, task_id, self._hostname)
        )

    def __getattr__(self, name: str) -> Any:
        # Everything else (groups, flush, connection, enable/disable...) is the real one's.
        return getattr(self._forward_to, name)

    def _event(self, event_type: str, fields: dict[str, Any]) -> TaskEvent:
        uuid = fields["uuid"]
        if event_type == "task-started":  # the end of the task's queue wait
            return TaskEvent(event_type, uuid, self._hostname, timestamp=time.time())
        if event_type in _MID_FLIGHT:
            runtime = fields.get("runtime")  # task-succeeded's: Celery's own measure
            return TaskEvent(event_type, uuid, self._hostname, runtime=runtime)
        return self._described(event_type, uuid, fields)

    def _described(self, event_type: str, uuid: str, fields: dict[str, Any]) -> TaskEvent:
        """An event with what the message being handled, or the pool's result, says of its
        task: the only fields of a worker's event that need checking (from headers)."""
        event = TaskEvent(event_type, uuid, self._hostname)
        name = fields.get("name")
        arrival = self._arrivals.get(uuid)
        if arrival is not None:
            if name is None:
                name = arrival.name
            event.queue = queue_name(arrival.queue)
        if event_type == "task-received":
            event.name = task_name(name)
            if arrival is not None:
                event.ready_at = ready_at(arrival.sent_at, fields.get("eta"))
            event.retries = retry_count(fields.get("retries"))
        elif name is not None:
            event.name = task_name(name)
        if event_type == "task-failed":
            exception = self._failures.pop(uuid)
            if exception is None:
                event.exception = exception_label(fields.get("exception"))
            else:
                event.exception = label(exception)
        return event


def counting(tally: MessageTally, reason: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler``, counting each call under ``reason`` first."""

    def counted(*args: Any, **kwargs: Any) -> Any:
        tally.add(reason)
        return handler(*args, **kwargs)

    return counted


class TaskEventTap(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: installs the ``EventTap`` on every (re)start of the consumer.

    It requires ``Tasks`` so it starts after the consumer built its task strategies (which
    capture the dispatcher) and rebuilds them around the tap; the dispatcher itself is
    re-created on every broker reconnect, which restarts this step too.
    """

    label = "celery-prom event tap"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.metrics = getattr(c.controller, METRICS_ATTRIBUTE, None)
        self.faults = Faults() if self.metrics is None else self.metrics.faults
        self.arrivals = ArrivalLog(self.faults)
        self.failures = FailureLog()
        self._main_pid = os.getpid()
        self._tap: EventTap | None = None
        self._result_watch: ResultWatch | None = None
        self._consumer_overrides: dict[str, Any] = {}
        super().__init__(c, **kwargs)

    def include_if(self, c: Any) -> bool:
        return self.metrics is not None

    def start(self, c: Any) -> None:
        try:
            self._install(c)
        except Exception as error:  # noqa: BLE001 - never the reason a worker stops
            self.faults.record(faults.TAP_INSTALL, error)
            logger.error(
                "celery-prom: the task event tap could not be installed on Celery %s: this "
                "worker runs tasks, but its task metrics are NOT recorded",
                celery.__version__,
            )
            with self.faults.contained(faults.TAP_INSTALL):
                self._uninstall(c)
                c.update_strategies()  # none may keep a half-installed tap
        else:
            self.faults.resolved(faults.TAP_INSTALL)

    def stop(self, c: Any) -> None:
        with self.faults.contained(faults.TAP_INSTALL):
            self._uninstall(c)

    def shutdown(self, c: Any) -> None:
        self.stop(c)

    def _install(self, c: Any) -> None:
        assert self.metrics is not None
        tap = self._tap = EventTap(
            c.event_dispatcher,
            self.metrics.recorder,
            hostname=c.hostname,
            arrivals=self.arrivals,
            failures=self.failures,
            faults=self.faults,
        )
        # The consumer loop asks for its message handler when it starts, after this step,
        # and the handler looks up on_decode_error on the consumer each time it needs it.
        self._consumer_overrides = {
            name: c.__dict__.get(name) for name in ("create_task_handler", "on_decode_error")
        }
        c.event_dispatcher = tap
        # Before the strategies are rebuilt: their requests take the pool's apply_async then.
        self._result_watch = ResultWatch(
            self.failures.add,
            tap.record_ignored,
            self.faults,
        )
        self._result_watch.install(c.pool)
        c.update_strategies()
        # Requests that outlived a reconnect still point at the dispatcher they had.
        for request in (*worker_state.reserved_requests, *scheduled_requests(c.timer)):
            request.eventer = tap
        create_handler = c.create_task_handler
        c.create_task_handler = lambda: self.arrivals.wrap(create_handler())
        c.on_decode_error = counting(
            self.metrics.invalid_messages, INVALID_UNDECODABLE, c.on_decode_error
        )
        signals.task_failure.connect(self._on_task_failure, weak=False)
        signals.task_rejected.connect(self._on_task_rejected, weak=False)

    def _uninstall(self, c: Any) -> None:
        """Put back what ``_install`` replaced, however far it got."""
        signals.task_failure.disconnect(self._on_task_failure)
        signals.task_rejected.disconnect(self._on_task_rejected)
        for name, previous in self._consumer_overrides.items():
            if previous is None:
                c.__dict__.pop(name, None)
            else:
                setattr(c, name, previous)
        self._consumer_overrides = {}
        if self._result_watch is not None:
            self._result_watch.uninstall()
            self._result_watch = None
        tap, self._tap = self._tap, None
        if tap is not None and c.event_dispatcher is tap:
            c.event_dispatcher = tap.dispatcher

    def _on_task_failure(
        self, sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any
    ) -> None:
        # Pool children inherit this receiver; only the main process's tap records.
        if os.getpid() == self._main_pid and isinstance(exception, BaseException):
            with self.faults.contained(faults.SIGNAL):
                self.failures.add(task_id, exception)

    def _on_task_rejected(self, sender: Any = None, exc: Any = None, **_: Any) -> None:
        if os.getpid() == self._main_pid and self.metrics is not None:
            with self.faults.contained(faults.SIGNAL):
                reason = INVALID_UNRECOGNIZED if exc is None else INVALID_TASK
                self.metrics.invalid_messages.add(reason)
