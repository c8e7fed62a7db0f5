"""The event tap's parts in isolation, with small fakes for the consumer, its dispatcher and
the recorder. ``test_tap.py`` and ``test_tap_edge_cases.py`` run the same parts in real
workers."""

from __future__ import annotations

import dataclasses
import time
import types
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import signals
from celery.utils.serialization import UnpickleableExceptionWrapper
from celery.worker import state as worker_state
from kombu.asynchronous.timer import Timer

from celery_prom import faults
from celery_prom.bootsteps.tap import (
    _FAILURE_LOG_SIZE,
    METRICS_ATTRIBUTE,
    Arrival,
    ArrivalLog,
    EventTap,
    FailureLog,
    TaskEventTap,
)
from celery_prom.bootsteps.worker_state import (
    INVALID_UNDECODABLE,
    INVALID_UNRECOGNIZED,
    MessageTally,
)
from celery_prom.faults import Faults
from celery_prom.producer import SENT_AT_HEADER
from celery_prom.task_event import (
    DEFAULT_QUEUE,
    DROP_INVALID_FIELD,
    RECORDED_MARK,
    InvalidEvent,
    TaskEvent,
)

HOST = "w1@host"
SENT_AT = 1700000000.5
#: The task-received event of the message ``task_message("t1", "jobs")``, as the recorder
#: gets it and as it is forwarded.
RECEIVED_RECORDED = {
    "hostname": HOST,
    "type": "task-received",
    "uuid": "t1",
    "name": "app.add",
    "queue": "jobs",
    "ready_at": SENT_AT,
}
RECEIVED_FORWARDED = (
    "task-received",
    {"uuid": "t1", "name": "app.add", "queue": "jobs", RECORDED_MARK: True},
)


# -- fakes -----------------------------------------------------------------------------------


_UNSET = TaskEvent("", "", "")


def fields_of(event: TaskEvent) -> dict[str, Any]:
    """What the recorder was handed, as plain fields (those set, beside the three every event
    has): the one place that knows its shape."""
    return {
        field.name: getattr(event, field.name)
        for field in dataclasses.fields(event)
        if field.name in ("type", "uuid", "hostname")
        or getattr(event, field.name) != getattr(_UNSET, field.name)
    }


class Recorder:
    """Keeps every event it is handed, and the reasons of those it is told were invalid."""

    def __init__(self, journal: list[str], error: Exception | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self._journal = journal
        self._error = error

    def record(self, event: TaskEvent) -> None:
        self._journal.append(f"recorded {event.type}")
        if self._error is not None:
            raise self._error
        self.events.append(fields_of(event))

    def count_invalid(self, reason: str) -> None:
        self._journal.append(f"invalid {reason}")
        self.invalid.append(reason)


class Dispatcher:
    """The worker's event dispatcher: what it was asked to publish."""

    connection = "the broker connection"

    def __init__(
        self, journal: list[str], enabled: bool = True, groups: set[str] | None = None
    ) -> None:
        self.enabled = enabled
        self.groups = set() if groups is None else groups
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.flushes = 0
        self._journal = journal

    def send(self, type: str, **fields: Any) -> str:
        self._journal.append(f"sent {type}")
        self.sent.append((type, fields))
        return "published"

    def flush(self) -> None:
        self.flushes += 1


class Message:
    """The parts of a kombu message the tap reads."""

    def __init__(self, headers: Any, delivery_info: Any = None) -> None:
        self.headers = headers
        self.delivery_info = delivery_info


class UnreadableMessage:
    @property
    def headers(self) -> Any:
        raise RuntimeError("headers of a broken message")


def task_message(task_id: str = "t1", queue: str = "jobs") -> Message:
    headers = {"id": task_id, "task": "app.add", SENT_AT_HEADER: SENT_AT}
    return Message(headers, {"routing_key": queue, "exchange": ""})


def fault_counts(recorded: Faults) -> dict[str, float]:
    return {
        sample.labels["component"]: sample.value
        for family in recorded.collect()
        for sample in family.samples
    }


class Harness:
    """An ``EventTap`` with its logs, a recorder and (unless ``dispatcher`` is False) a
    dispatcher, all writing to one journal."""

    def __init__(
        self,
        *,
        dispatcher: bool = True,
        enabled: bool = True,
        groups: set[str] | None = None,
        recorder_error: Exception | None = None,
    ) -> None:
        self.journal: list[str] = []
        self.faults = Faults()
        self.arrivals = ArrivalLog(self.faults)
        self.failures = FailureLog()
        self.recorder = Recorder(self.journal, recorder_error)
        self.dispatcher = Dispatcher(self.journal, enabled, groups) if dispatcher else None
        self.tap = EventTap(
            self.dispatcher,
            self.recorder,
            hostname=HOST,
            arrivals=self.arrivals,
            failures=self.failures,
            faults=self.faults,
        )

    def send_while_handling(self, message: Any, type: str, **fields: Any) -> Any:
        """Send an event from inside the message's handler, as Celery's strategies do."""
        return self.arrivals.wrap(lambda _: self.tap.send(type, **fields))(message)

    @property
    def sent(self) -> list[tuple[str, dict[str, Any]]]:
        assert self.dispatcher is not None
        return self.dispatcher.sent


# -- ArrivalLog ------------------------------------------------------------------------------


def test_an_arrival_is_known_while_its_message_is_handled_and_forgotten_after() -> None:
    arrivals = ArrivalLog(Faults())
    seen: list[Arrival | None] = []

    def handler(message: Any) -> str:
        seen.append(arrivals.get("t1"))
        return "handled"

    assert arrivals.wrap(handler)(task_message("t1", "jobs")) == "handled"
    assert seen == [Arrival("app.add", "jobs", SENT_AT)]
    assert arrivals.get("t1") is None


def test_an_arrival_is_forgotten_when_the_handler_raises() -> None:
    arrivals = ArrivalLog(Faults())

    def handler(message: Any) -> None:
        assert arrivals.get("t1") is not None
        raise ValueError("the handler failed")

    with pytest.raises(ValueError, match="the handler failed"):
        arrivals.wrap(handler)(task_message("t1"))
    assert arrivals.get("t1") is None


@pytest.mark.parametrize("delivery_info", [None, {}, {"routing_key": ""}])
def test_a_message_without_a_routing_key_is_on_the_default_queue(delivery_info: Any) -> None:
    arrivals = ArrivalLog(Faults())
    message = Message({"id": "t1", "task": "app.add"}, delivery_info)
    seen: list[Arrival | None] = []

    arrivals.wrap(lambda _: seen.append(arrivals.get("t1")))(message)

    assert seen == [Arrival("app.add", DEFAULT_QUEUE, None)]


@pytest.mark.parametrize("headers", [None, {}, {"id": 7, "task": "app.add"}, ["id", "t1"]])
def test_a_message_without_a_string_id_is_handled_and_not_logged(headers: Any) -> None:
    recorded = Faults()
    arrivals = ArrivalLog(recorded)
    seen: list[tuple[Any, Arrival | None]] = []
    message = Message(headers, {"routing_key": "jobs"})

    arrivals.wrap(lambda handled: seen.append((handled, arrivals.get(7))))(message)

    assert seen == [(message, None)]
    assert fault_counts(recorded) == {}


def test_a_message_whose_headers_raise_is_handled_and_counted_as_a_tap_fault() -> None:
    recorded = Faults()
    arrivals = ArrivalLog(recorded)
    message = UnreadableMessage()
    handled: list[Any] = []

    arrivals.wrap(handled.append)(message)

    assert handled == [message]
    assert fault_counts(recorded) == {faults.TAP: 1}
    assert recorded.reasons() == {faults.TAP: "RuntimeError: headers of a broken message"}


# -- FailureLog ------------------------------------------------------------------------------


def test_a_failure_is_named_by_its_class_and_popped_once() -> None:
    failures = FailureLog()
    failures.add("t1", TimeoutError("hard limit"))

    assert failures.pop("t1") == "TimeoutError"
    assert failures.pop("t1") is None


def test_an_unpicklable_exception_is_named_by_its_real_class() -> None:
    class PaymentDeclined(Exception):
        pass

    failures = FailureLog()
    failures.add("t1", UnpickleableExceptionWrapper.from_exception(PaymentDeclined("no")))

    assert failures.pop("t1") == "PaymentDeclined"


def test_failures_whose_event_never_comes_are_forgotten_oldest_first() -> None:
    failures = FailureLog()
    for n in range(_FAILURE_LOG_SIZE + 1):
        failures.add(f"t{n}", ValueError(n))

    assert failures.pop("t0") is None
    assert failures.pop("t1") == "ValueError"
    assert failures.pop(f"t{_FAILURE_LOG_SIZE}") == "ValueError"


# -- EventTap --------------------------------------------------------------------------------


def test_a_task_event_is_recorded_with_its_arrival_then_forwarded_without_the_extras() -> None:
    h = Harness(groups={"task", "worker"})

    result = h.send_while_handling(
        task_message("t1", "jobs"), "task-received", uuid="t1", name="app.add"
    )

    assert result == "published"
    assert h.journal == ["recorded task-received", "sent task-received"]
    assert h.recorder.events == [RECEIVED_RECORDED]
    assert h.sent == [RECEIVED_FORWARDED]


def test_a_started_event_gets_the_time_and_is_not_looked_up_in_the_message() -> None:
    h = Harness()
    before = time.time()

    h.send_while_handling(task_message("t1"), "task-started", uuid="t1", pid=42)

    after = time.time()
    [event] = h.recorder.events
    assert before <= event.pop("timestamp") <= after
    assert event == {"hostname": HOST, "type": "task-started", "uuid": "t1"}
    assert h.sent == [("task-started", {"uuid": "t1", "pid": 42, RECORDED_MARK: True})]


def test_an_event_that_names_no_task_is_recorded_with_the_messages_name_only() -> None:
    h = Harness()

    h.send_while_handling(task_message("t1", "jobs"), "task-revoked", uuid="t1", expired=True)

    assert h.recorder.events == [
        {"hostname": HOST, "type": "task-revoked", "uuid": "t1", "name": "app.add", "queue": "jobs"}
    ]
    assert h.sent == [("task-revoked", {"uuid": "t1", "expired": True, RECORDED_MARK: True})]


@pytest.mark.parametrize(
    ("headers", "routing_key"),
    [
        ({"task": "a" * 300}, "jobs"),
        ({"task": 42}, "jobs"),
        ({"task": "app.add", SENT_AT_HEADER: "yesterday"}, "jobs"),
        ({"task": "app.add"}, "q" * 300),
    ],
    ids=["long-name", "name-no-text", "sent-at-no-number", "long-queue"],
)
def test_what_the_message_says_is_checked_and_a_bad_event_counted_as_invalid(
    headers: dict[str, Any], routing_key: str
) -> None:
    h = Harness()
    message = Message({"id": "t1", **headers}, {"routing_key": routing_key})

    h.send_while_handling(message, "task-received", uuid="t1", name=headers["task"])

    assert h.recorder.events == []
    assert h.recorder.invalid == [DROP_INVALID_FIELD]
    assert [type for type, _ in h.sent] == ["task-received"]
    assert fault_counts(h.faults) == {}


def test_an_attempt_ending_in_ignore_is_recorded_as_an_event_of_its_own() -> None:
    h = Harness()

    h.tap.record_ignored("t1", replaced=True)
    h.tap.record_ignored("t2", replaced=False)

    assert h.recorder.events == [
        {"hostname": HOST, "type": "task-replaced", "uuid": "t1"},
        {"hostname": HOST, "type": "task-ignored", "uuid": "t2"},
    ]
    assert h.sent == []


def test_a_hostname_that_cannot_be_a_label_value_refuses_the_tap() -> None:
    with pytest.raises(InvalidEvent):
        EventTap(
            None,
            Recorder([]),
            hostname="w" * 300,
            arrivals=ArrivalLog(Faults()),
            failures=FailureLog(),
            faults=Faults(),
        )


def test_a_name_in_the_event_wins_over_the_messages() -> None:
    h = Harness()

    h.send_while_handling(task_message("t1"), "task-revoked", uuid="t1", name="app.real")

    assert [event["name"] for event in h.recorder.events] == ["app.real"]


def test_a_failure_carries_the_class_the_main_process_saw_to_the_recorder_only() -> None:
    h = Harness()
    h.failures.add("t1", TimeoutError("hard limit"))

    h.tap.send("task-failed", uuid="t1", exception="ExceptionWithTraceback()")

    assert h.recorder.events == [
        {
            "hostname": HOST,
            "type": "task-failed",
            "uuid": "t1",
            "exception": "TimeoutError",
        }
    ]
    assert h.sent == [
        (
            "task-failed",
            {"uuid": "t1", "exception": "ExceptionWithTraceback()", RECORDED_MARK: True},
        )
    ]
    assert h.failures.pop("t1") is None


@pytest.mark.parametrize(
    ("enabled", "groups", "forwarded"),
    [
        (True, set(), True),  # no groups: every event
        (True, {"task"}, True),
        (True, {"worker"}, False),
        (False, set(), False),
        (False, {"task"}, False),
    ],
)
def test_task_events_are_forwarded_only_where_the_dispatcher_would_publish_them(
    enabled: bool, groups: set[str], forwarded: bool
) -> None:
    h = Harness(enabled=enabled, groups=groups)

    result = h.tap.send("task-succeeded", uuid="t1", runtime=0.5)

    assert [event["type"] for event in h.recorder.events] == ["task-succeeded"]
    assert (result, len(h.sent)) == (("published", 1) if forwarded else (None, 0))


@pytest.mark.parametrize("enabled", [True, False])
def test_other_events_are_forwarded_untouched_and_not_recorded(enabled: bool) -> None:
    h = Harness(enabled=enabled, groups={"task"})

    h.tap.send("worker-heartbeat", freq=2.0, active=1)

    assert h.recorder.events == []
    assert h.sent == ([("worker-heartbeat", {"freq": 2.0, "active": 1})] if enabled else [])


def test_everything_but_send_is_the_real_dispatchers() -> None:
    h = Harness(groups={"task"})
    assert h.dispatcher is not None

    h.tap.flush()

    assert h.dispatcher.flushes == 1
    assert h.tap.groups is h.dispatcher.groups
    assert h.tap.connection == "the broker connection"
    assert h.tap.enabled is True  # so strategies report to it even when the real one is off


def test_without_a_dispatcher_task_events_are_recorded_and_nothing_is_published() -> None:
    h = Harness(dispatcher=False)

    assert h.tap.send("task-received", uuid="t1", name="app.add") is None
    assert h.tap.send("worker-heartbeat") is None

    assert [event["type"] for event in h.recorder.events] == ["task-received"]
    assert (h.tap.groups, h.tap.connection, h.tap.flush(), h.tap.close()) == (
        set(),
        None,
        None,
        None,
    )


def test_a_recorder_that_raises_is_contained_and_the_event_still_forwarded() -> None:
    h = Harness(recorder_error=KeyError("broken recorder"))

    assert h.tap.send("task-succeeded", uuid="t1", runtime=0.5) == "published"
    assert h.tap.send("task-succeeded", uuid="t2", runtime=0.5) == "published"

    assert h.sent == [
        ("task-succeeded", {"uuid": task_id, "runtime": 0.5, RECORDED_MARK: True})
        for task_id in ("t1", "t2")
    ]
    assert fault_counts(h.faults) == {faults.TAP: 2}


# -- TaskEventTap: installing the tap on the consumer ----------------------------------------


class Metrics:
    """The worker's ``WorkerMetrics``, as far as the tap step uses it."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.recorder = Recorder([])
        self.invalid_messages = MessageTally()


class Consumer:
    """The parts of Celery's consumer the tap step reads and replaces."""

    hostname = HOST

    def __init__(self, metrics: Metrics | None, failing_updates: int = 0) -> None:
        self.controller = types.SimpleNamespace()
        if metrics is not None:
            setattr(self.controller, METRICS_ATTRIBUTE, metrics)
        self.dispatcher = self.event_dispatcher = Dispatcher([])
        self.pool = Pool()
        self.timer = Timer()  # where Celery 5.3 to 5.6 keep requests waiting for their ETA
        self.strategies_built_with: list[Any] = []
        self.decode_errors: list[Any] = []
        self._failing_updates = failing_updates

    def update_strategies(self) -> None:
        # Celery's strategies capture the dispatcher the consumer has at this point.
        self.strategies_built_with.append(self.event_dispatcher)
        if self._failing_updates:
            self._failing_updates -= 1
            raise RuntimeError("strategies could not be built")

    def create_task_handler(self) -> Callable[[Any], None]:
        def on_task_received(message: Any) -> None:
            headers = message.headers
            self.event_dispatcher.send("task-received", uuid=headers["id"], name=headers["task"])

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self.decode_errors.append(message)


class Pool:
    """The worker's pool: the tap reads each result it hands back through apply_async."""

    def apply_async(self, target: Any, *args: Any, **options: Any) -> None:
        return None


class ConsumerOfAnotherCelery(Consumer):
    """A consumer whose decode error handler is not where the tap looks for it."""

    @property
    def on_decode_error(self) -> Any:  # type: ignore[override]
        raise AttributeError("on_decode_error")


class Request:
    eventer: Any = None


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def step_for() -> Iterator[Callable[[Consumer], TaskEventTap]]:
    """Factory: the step for a consumer; stopped after the test, since the signals it
    connects are Celery's global ones."""
    started: list[tuple[TaskEventTap, Consumer]] = []

    def build(consumer: Consumer) -> TaskEventTap:
        step = TaskEventTap(consumer)
        started.append((step, consumer))
        return step

    yield build
    for step, consumer in started:
        step.stop(consumer)


@pytest.fixture
def started(
    metrics: Metrics, step_for: Callable[[Consumer], TaskEventTap]
) -> tuple[Consumer, TaskEventTap]:
    """A consumer, and the tap step started on it."""
    consumer = Consumer(metrics)
    step = step_for(consumer)
    step.start(consumer)
    return consumer, step


@pytest.fixture
def reserved_request() -> Iterator[Request]:
    """A request the worker holds from before a reconnect."""
    request = Request()
    worker_state.reserved_requests.add(request)
    yield request
    worker_state.reserved_requests.discard(request)


def signals_reach(step: TaskEventTap) -> bool:
    """Whether Celery's task_failure signal reaches the step's failure log."""
    task_id = uuid.uuid4().hex
    signals.task_failure.send(sender=None, task_id=task_id, exception=ValueError("x"))
    return step.failures.pop(task_id) == "ValueError"


def test_the_step_is_left_out_of_workers_without_celery_prom() -> None:
    consumer = Consumer(metrics=None)

    assert TaskEventTap(consumer).include_if(consumer) is False


def test_start_puts_the_tap_between_the_consumer_and_its_dispatcher(
    metrics: Metrics, step_for: Callable[[Consumer], TaskEventTap], reserved_request: Request
) -> None:
    consumer = Consumer(metrics)
    step = step_for(consumer)

    step.start(consumer)

    tap = consumer.event_dispatcher
    assert isinstance(tap, EventTap)
    assert tap.dispatcher is consumer.dispatcher
    assert consumer.strategies_built_with == [tap]
    assert reserved_request.eventer is tap
    assert fault_counts(metrics.faults) == {}


def test_messages_handled_after_start_are_recorded_with_their_arrival(
    metrics: Metrics, started: tuple[Consumer, TaskEventTap]
) -> None:
    consumer, _ = started

    consumer.create_task_handler()(task_message("t1", "jobs"))

    assert metrics.recorder.events == [RECEIVED_RECORDED]
    assert consumer.dispatcher.sent == [RECEIVED_FORWARDED]


def test_after_start_decode_errors_rejections_and_failures_are_noted(
    metrics: Metrics, started: tuple[Consumer, TaskEventTap]
) -> None:
    consumer, step = started
    message = Message({})

    consumer.on_decode_error(message, ValueError("not json"))
    signals.task_rejected.send(sender=None, message=message, exc=None)

    assert consumer.decode_errors == [message]
    assert metrics.invalid_messages.items() == [(INVALID_UNDECODABLE, 1), (INVALID_UNRECOGNIZED, 1)]
    assert signals_reach(step)


def test_stop_gives_the_consumer_back_what_start_replaced(
    metrics: Metrics, started: tuple[Consumer, TaskEventTap]
) -> None:
    consumer, step = started

    step.stop(consumer)

    assert consumer.event_dispatcher is consumer.dispatcher
    assert "create_task_handler" not in vars(consumer)
    assert "on_decode_error" not in vars(consumer)
    assert "apply_async" not in vars(consumer.pool)
    assert not signals_reach(step)
    signals.task_rejected.send(sender=None, message=Message({}), exc=None)
    assert metrics.invalid_messages.items() == []
    assert fault_counts(metrics.faults) == {}


@pytest.mark.parametrize(
    ("consumer_class", "failing_updates", "reason"),
    [
        (Consumer, 1, "RuntimeError: strategies could not be built"),
        (ConsumerOfAnotherCelery, 0, "AttributeError: on_decode_error"),
    ],
    ids=["strategies", "decode-error-handler"],
)
def test_an_install_failing_half_way_is_undone_and_recorded(
    metrics: Metrics,
    step_for: Callable[[Consumer], TaskEventTap],
    consumer_class: type[Consumer],
    failing_updates: int,
    reason: str,
) -> None:
    consumer = consumer_class(metrics, failing_updates)
    step = step_for(consumer)

    step.start(consumer)  # does not raise: the worker goes on without task metrics

    assert consumer.event_dispatcher is consumer.dispatcher
    # Rebuilt last around the real dispatcher: no strategy keeps the half-installed tap.
    assert consumer.strategies_built_with[-1] is consumer.dispatcher
    assert "create_task_handler" not in vars(consumer)
    assert not signals_reach(step)
    assert fault_counts(metrics.faults) == {faults.TAP_INSTALL: 1}
    assert metrics.faults.reasons() == {faults.TAP_INSTALL: reason}


def test_a_later_install_that_works_resolves_the_fault(
    metrics: Metrics, step_for: Callable[[Consumer], TaskEventTap]
) -> None:
    consumer = Consumer(metrics, failing_updates=1)
    step = step_for(consumer)
    step.start(consumer)

    step.start(consumer)  # the consumer restarts its steps on every reconnect

    assert isinstance(consumer.event_dispatcher, EventTap)
    assert metrics.faults.reasons() == {}
    assert fault_counts(metrics.faults) == {faults.TAP_INSTALL: 1}
