"""The test app with one of celery-prom's parts made to fail, chosen by ``CPTEST_FAULT``.

Workers of this module show what a fault inside celery-prom does to the worker: it must go
on running tasks. The app and its tasks are those of ``cptest_tasks``.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

from cptest_tasks import app, fail, noop

from celery_prom.bootsteps import tap, worker_state
from celery_prom.http import MetricsServer
from celery_prom.multiprocess import MultiprocessDirectory
from celery_prom.recorder import Recorder

__all__ = ["app", "fail", "noop"]


def _raise(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError("injected fault")


def _celery_without_scheduled_requests(*args: Any) -> NoReturn:
    # What Celery 5.3 to 5.6 did to the tap that assumed 5.7's internals.
    raise AttributeError("module 'celery.worker.state' has no attribute 'scheduled_requests'")


_FAULTS = {
    "startup": lambda: setattr(MetricsServer, "start", _raise),
    "tap_install": lambda: setattr(tap, "scheduled_requests", _celery_without_scheduled_requests),
    "tap": lambda: setattr(Recorder, "record", _raise),
    "signal": lambda: setattr(tap.FailureLog, "add", _raise),
    "scrape": lambda: setattr(worker_state.WorkerStateCollector, "collect", _raise),
    "multiprocess": lambda: setattr(MultiprocessDirectory, "_compact", _raise),
}

_FAULTS[os.environ["CPTEST_FAULT"]]()
