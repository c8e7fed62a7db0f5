"""Telling an attempt that ended by raising Ignore from its result, and which were replaced.

The worker tests (test_tap_canvas.py) run this under real pools; here are the shapes of
result it must tell apart, made by billiard and Celery themselves.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.exceptions import Ignore

from celery_prom.bootsteps.ignored import IgnoreWatch, is_replacement, raised_ignore


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


def test_the_ignore_is_found_in_results_from_a_pool_process_and_from_a_thread() -> None:
    ignore = Ignore("Replaced by new task")
    in_thread = exception_info(ignore)  # the exception stays wrapped in this process
    from_child = pickle.loads(pickle.dumps(in_thread))  # unwrapped when unpickled

    assert raised_ignore((1, in_thread, 0.01)) is ignore
    assert isinstance(raised_ignore((1, from_child, 0.01)), Ignore)


@pytest.mark.parametrize(
    "result",
    [
        pytest.param((0, "3", 0.01), id="success"),
        pytest.param((1, exception_info(ValueError("x")), 0.01), id="failure"),
        pytest.param(exception_info(KeyboardInterrupt()), id="pool-error"),
        pytest.param(None, id="nothing"),
    ],
)
def test_other_results_raised_no_ignore(result: object) -> None:
    assert raised_ignore(result) is None


class StandInPool:
    """Calls back at once with the result it is given, as a solo pool would."""

    def __init__(self, result: object) -> None:
        self.result = result

    def apply_async(self, target: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return options["callback"](self.result)


def test_the_watch_reports_an_ignored_attempt_after_celerys_own_callback() -> None:
    calls: list[object] = []
    pool = StandInPool((1, exception_info(Ignore("Replaced by new task")), 0.01))
    watch = IgnoreWatch(lambda task_id, replaced: calls.append((task_id, replaced)))
    watch.install(pool)

    pool.apply_async(len, callback=lambda result: calls.append("celery"), correlation_id="t1")
    watch.uninstall()

    assert calls == ["celery", ("t1", True)]
    assert "apply_async" not in vars(pool)


def test_the_watch_passes_other_results_through_untouched() -> None:
    calls: list[object] = []
    pool = StandInPool((0, "3", 0.01))
    watch = IgnoreWatch(lambda task_id, replaced: calls.append((task_id, replaced)))
    watch.install(pool)

    returned = pool.apply_async(len, callback=lambda result: result, correlation_id="t1")

    assert (returned, calls) == ((0, "3", 0.01), [])


def test_a_failure_to_record_never_reaches_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    def broken(task_id: str, replaced: bool) -> None:
        raise RuntimeError("recorder broke")

    result = (1, exception_info(Ignore()), 0.01)
    pool = StandInPool(result)
    IgnoreWatch(broken).install(pool)

    returned = pool.apply_async(len, callback=lambda result: "acknowledged", correlation_id="t1")

    assert returned == "acknowledged"
    assert "could not record how task t1 ended" in caplog.text
