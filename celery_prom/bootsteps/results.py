"""Reads each task attempt's result as the pool hands it back to the worker's main process.

Two things the task events do not say are read there:

* that an attempt ended by raising ``Ignore``, which Celery reports with no event at all.
  ``Task.replace`` ends the running attempt that way: it sends the replacement under the
  same task id, then raises ``Ignore``, and the main process only acknowledges the message.
  Left unseen, the attempt would stay started for good;
* the class of the exception a failed attempt raised. Its ``task-failed`` event carries only
  the exception's ``repr``, which many exceptions make unreadable (any class with a
  ``__repr__`` of its own, such as redis-py's errors: ``server:DataError``); the result holds
  the exception itself, unpickled in the main process.

Every pool hands each result to a callback in the main process, so a pool whose
``apply_async`` wraps that callback sees them under every pool, at no cost to the broker.

Checked against Celery 5.3 to 5.7: the consumer's task strategies read ``pool.apply_async``
when they are built (``create_request_cls``) and call it with the task id as
``correlation_id`` and ``Request.on_success`` as ``callback``, which gets
``(failed, ExceptionInfo, runtime)`` and sends ``task-failed`` from within; the exception is
itself when the result crossed from a pool process, else wrapped in billiard's
``ExceptionWithTraceback``; ``Retry``, ``Reject`` and ``Ignore`` (Celery's task predicates)
are handled apart from failures (a ``Reject`` that Celery 5.7 also reports as failed goes
through ``task_failure``); and ``Task.on_replace`` raises ``Ignore('Replaced by new task')``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Ignore, TaskPredicate

from celery_prom import faults
from celery_prom.faults import Faults

#: The message of the ``Ignore`` that ``Task.on_replace`` raises.
REPLACED_MESSAGE = "Replaced by new task"

#: Called with the task id and the exception of an attempt that failed.
OnFailure = Callable[[str, BaseException], None]
#: Called with the task id and whether the attempt was replaced (else plainly ignored).
OnIgnored = Callable[[str, bool], None]


def raised(result: object) -> BaseException | None:
    """The exception an attempt's result reports, if the attempt raised one."""
    if type(result) is not tuple or len(result) != 3 or not result[0]:
        return None
    exception = getattr(result[1], "exception", None)
    if isinstance(exception, ExceptionWithTraceback):
        exception = exception.exc
    return exception if isinstance(exception, BaseException) else None


def is_replacement(ignore: Ignore) -> bool:
    return bool(ignore.args == (REPLACED_MESSAGE,))


class ResultWatch:
    """Wraps a pool's ``apply_async`` so that each result is read before Celery handles it."""

    def __init__(self, on_failure: OnFailure, on_ignored: OnIgnored, faults: Faults) -> None:
        self._on_failure = on_failure
        self._on_ignored = on_ignored
        self._faults = faults
        self._pool: Any = None
        self._previous: Any = None

    def install(self, pool: Any) -> None:
        """Wrap ``pool``'s ``apply_async``: task strategies built from now on call it."""
        self._pool = pool
        self._previous = pool.__dict__.get("apply_async")
        pool.apply_async = self._watching(pool.apply_async)

    def uninstall(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._previous is None:
            pool.__dict__.pop("apply_async", None)
        else:
            pool.apply_async = self._previous

    def read(self, task_id: str, result: object) -> None:
        """Report what ``result`` says that its events will not; never raises, since the
        pool's result handling must go on regardless."""
        # A plain try, not ``Faults.contained``: this runs for every task, and a
        # generator-based context manager costs the main process a microsecond each time.
        try:
            exception = raised(result)
            if isinstance(exception, Ignore):
                self._on_ignored(task_id, is_replacement(exception))
            elif exception is not None and not isinstance(exception, TaskPredicate):
                self._on_failure(task_id, exception)
        except Exception as error:  # noqa: BLE001 - the pool's result handling goes on
            self._faults.record(faults.TAP, error)

    def _watching(self, apply_async: Callable[..., Any]) -> Callable[..., Any]:
        read = self.read

        def watched_apply_async(target: Any, *args: Any, **options: Any) -> Any:
            callback = options.get("callback")
            task_id = options.get("correlation_id")
            if callback is not None and isinstance(task_id, str):
                options["callback"] = _reading_first(callback, task_id, read)
            return apply_async(target, *args, **options)

        return watched_apply_async


def _reading_first(
    callback: Callable[..., Any], task_id: str, read: Callable[[str, object], None]
) -> Callable[..., Any]:
    def on_result(result: object, *args: Any, **kwargs: Any) -> Any:
        read(task_id, result)  # before Celery's handling, which sends task-failed
        return callback(result, *args, **kwargs)

    return on_result
