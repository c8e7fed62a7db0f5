"""A Celery app on kombu's in-memory broker, for the schedulers the tests run in-process, and
the snapshot of a beat that has ticked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from celery_prom.beat.snapshot import BeatSnapshot, EntryFacts
from celery_prom.store import Histogram
from tests.support import unique


@pytest.fixture
def app() -> Iterator[Celery]:
    # Tasks are not registered: beat sends them by name, as it does for most apps.
    app = Celery("cptest-beat-in-process", broker="memory://", set_as_current=False)
    app.conf.update(result_expires=None, task_default_queue=unique("q"))
    yield app
    app.close()


@pytest.fixture
def ticking() -> BeatSnapshot:
    """A beat that sent an entry three times (once failing) and has a second one to run."""
    lateness = Histogram(3)
    lateness.buckets = [2, 1, 0]
    lateness.sum = 0.6
    return BeatSnapshot(
        scheduler="celery.beat.PersistentScheduler",
        tick=1700000001.0,
        sent={("every-minute", "app.sync"): 3},
        errors={("every-minute", "app.sync"): 1},
        lateness={"every-minute": lateness},
        entries=(
            EntryFacts("every-minute", "app.sync", 1700000060.0, 1700000000.0),
            EntryFacts("nightly", "app.report", 1700050000.0, None),
        ),
        faults={"beat": (2, "ValueError: boom")},
    )
