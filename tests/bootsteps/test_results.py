"""Reading attempts' results: endings by Ignore (replaced or not) and exceptions of failures.

The worker tests (test_tap_canvas.py, test_tap_edge_cases.py) run this under real pools;
here are the shapes of result it must tell apart, made by billiard and Celery themselves.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.exceptions import Ignore, Reject, Retry

from celery_prom.bootsteps.results import ResultWatch, is_replacement, raised
from celery_prom.faults import Faults


def exception_info(exception: BaseException) -> ExceptionInfo:
    try:
        raise exception
    except type(exception):
        return ExceptionInfo()


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("ignored-test", broker="memory://", set_as_current=False)
    yield app
    app.close()


def test_what_celerys_task_replace_raises_is_taken_for_a_replacement(app: Celery) -> None:
    @app.task(bind=True, shared=False)
    def replaced(self: Any) -> None:
        raise self.replace(replacement.s())

    @app.task(shared=False)
    def replacement() -> None:
        return None

    replaced.push_request(id="t1", is_eager=False)
    try:
        with pytest.raises(Ignore) as raised:
            replaced.run()
    finally:
        replaced.pop_request()

    assert is_replacement(raised.value)


def test_an_ignore_raised_by_the_task_itself_is_no_replacement() -> None:
    assert not is_replacement(Ignore())
    assert not is_replacement(Ignore("done elsewhere"))


def test_the_exception_is_found_in_results_from_a_pool_process_and_from_a_thread() -> None:
    exception = ValueError("x")
    in_thread = exception_info(exception)  # the exception stays wrapped in this process
    from_child = pickle.loads(pickle.dumps(in_thread))  # unwrapped when unpickled

    assert raised((1, in_thread, 0.01)) is exception
    assert isinstance(raised((1, from_child, 0.01)), ValueError)


@pytest.mark.parametrize(
    "result",
    [
        pytest.param((0, "3", 0.01), id="success"),
        pytest.param(exception_info(KeyboardInterrupt()), id="pool-error"),
        pytest.param(None, id="nothing"),
    ],
)
def test_other_results_raised_nothing(result: object) -> None:
    assert raised(result) is None


class StandInPool:
    """Calls back at once with the result it is given, as a solo pool would."""

    def __init__(self, result: object) -> None:
        self.result = result

    def apply_async(self, target: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return options["callback"](self.result)


class Reports:
    """What a ``ResultWatch`` reported, in order, with Celery's own callback in between."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def watch(self) -> ResultWatch:
        return ResultWatch(
            lambda task_id, exception: self.calls.append(("failed", task_id, exception)),
            lambda task_id, replaced: self.calls.append(("ignored", task_id, replaced)),
            Faults(),
        )

    def celery(self, result: object) -> str:
        self.calls.append("celery")
        return "handled"


def run_through_watch(result: object) -> tuple[object, list[object]]:
    reports = Reports()
    pool = StandInPool(result)
    watch = reports.watch()
    watch.install(pool)
    returned = pool.apply_async(len, callback=reports.celery, correlation_id="t1")
    watch.uninstall()
    assert "apply_async" not in vars(pool)
    return returned, reports.calls


def test_a_replaced_attempt_is_reported_as_replaced() -> None:
    returned, calls = run_through_watch((1, exception_info(Ignore("Replaced by new task")), 0.1))

    assert (returned, calls) == ("handled", [("ignored", "t1", True), "celery"])


def test_a_failure_is_reported_with_its_exception_before_celery_sends_its_event() -> None:
    exception = KeyError("k")
    returned, calls = run_through_watch((1, exception_info(exception), 0.1))

    assert (returned, calls) == ("handled", [("failed", "t1", exception), "celery"])


@pytest.mark.parametrize(
    "result",
    [
        pytest.param((0, "3", 0.01), id="success"),
        pytest.param((1, exception_info(Retry("again")), 0.01), id="retry"),
        pytest.param((1, exception_info(Reject("no", requeue=True)), 0.01), id="reject"),
    ],
)
def test_endings_celery_reports_as_they_are_pass_through_untouched(result: object) -> None:
    assert run_through_watch(result) == ("handled", ["celery"])


def test_a_failure_to_report_never_reaches_the_pool() -> None:
    def broken(task_id: str, replaced: bool) -> None:
        raise RuntimeError("recorder broke")

    faults = Faults()
    pool = StandInPool((1, exception_info(Ignore()), 0.01))
    ResultWatch(lambda task_id, exception: None, broken, faults).install(pool)

    returned = pool.apply_async(len, callback=lambda result: "handled", correlation_id="t1")

    assert returned == "handled"
    assert faults.reasons() == {"tap": "RuntimeError: recorder broke"}
