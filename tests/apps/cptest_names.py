"""The test app with many task names: ``cptest_names.task_0000`` and on, each a no-op.

For ``benchmarks/worker_scrape.py``, a worker whose store holds a series per task name.
How many: ``CPTEST_TASK_NAMES`` (2,000 unless set).
"""

from __future__ import annotations

import os

from cptest_tasks import app

__all__ = ["app"]


def _noop() -> None:
    return None


def _register(count: int) -> None:
    for index in range(count):
        app.task(name=f"cptest_names.task_{index:04}")(_noop)


_register(int(os.environ.get("CPTEST_TASK_NAMES", "2000")))
