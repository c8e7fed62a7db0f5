"""Sees task attempts end by raising ``Ignore``, an ending Celery reports with no event.

``Task.replace`` ends the running attempt that way: it sends the replacement under the same
task id, then raises ``Ignore``; the worker's main process acknowledges the message and
sends nothing. Left unseen, the attempt would stay started for good, and the outcome of its
replacement (same id) would be taken for its own. Every pool hands each attempt's result to
a callback in the main process, so a pool whose ``apply_async`` wraps that callback sees
these endings under every pool, at no cost to the broker.

Checked against Celery 5.3 to 5.7: the consumer's task strategies read
``pool.apply_async`` when they are built (``create_request_cls``) and call it with the task
id as ``correlation_id`` and ``Request.on_success`` as ``callback``, which gets
``(failed, ExceptionInfo, runtime)``; the exception is the ``Ignore`` itself when the result
crossed from a pool process, else wrapped in billiard's ``ExceptionWithTraceback``; and
``Task.on_replace`` raises ``Ignore('Replaced by new task')``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Ignore

logger = logging.getLogger(__name__)

#: The message of the ``Ignore`` that ``Task.on_replace`` raises.
REPLACED_MESSAGE = "Replaced by new task"

#: Called with the task id and whether the attempt was replaced (else plainly ignored).
OnIgnored = Callable[[str, bool], None]


def raised_ignore(result: object) -> Ignore | None:
    """The ``Ignore`` an attempt's result reports, if the attempt ended by raising one."""
    if type(result) is not tuple or len(result) != 3 or not result[0]:
        return None
    exception = getattr(result[1], "exception", None)
    if isinstance(exception, ExceptionWithTraceback):
        exception = exception.exc
    return exception if isinstance(exception, Ignore) else None


def is_replacement(ignore: Ignore) -> bool:
    return bool(ignore.args == (REPLACED_MESSAGE,))


class IgnoreWatch:
    """Wraps a pool's ``apply_async`` so that attempts ending in ``Ignore`` are reported."""

    def __init__(self, on_ignored: OnIgnored) -> None:
        self._on_ignored = on_ignored
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

    def _watching(self, apply_async: Callable[..., Any]) -> Callable[..., Any]:
        on_ignored = self._on_ignored

        def watched_apply_async(target: Any, *args: Any, **options: Any) -> Any:
            callback = options.get("callback")
            task_id = options.get("correlation_id")
            if callback is not None and isinstance(task_id, str):
                options["callback"] = _reporting_ignore(callback, task_id, on_ignored)
            return apply_async(target, *args, **options)

        return watched_apply_async


def _reporting_ignore(
    callback: Callable[..., Any], task_id: str, on_ignored: OnIgnored
) -> Callable[..., Any]:
    def on_result(result: object, *args: Any, **kwargs: Any) -> Any:
        try:
            return callback(result, *args, **kwargs)
        finally:
            # After Celery's own handling, which for Ignore only acknowledges the message.
            try:
                ignore = raised_ignore(result)
                if ignore is not None:
                    on_ignored(task_id, is_replacement(ignore))
            except Exception:  # the pool's result handling must go on regardless
                logger.exception("celery-prom: could not record how task %s ended", task_id)

    return on_result
