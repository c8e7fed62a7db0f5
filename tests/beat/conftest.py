"""A Celery app on kombu's in-memory broker, for the schedulers the tests run in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from tests.support import unique


@pytest.fixture
def app() -> Iterator[Celery]:
    # Tasks are not registered: beat sends them by name, as it does for most apps.
    app = Celery("cptest-beat-in-process", broker="memory://", set_as_current=False)
    app.conf.update(result_expires=None, task_default_queue=unique("q"))
    yield app
    app.close()
