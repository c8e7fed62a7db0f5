"""The scheduler hook on a real Celery scheduler, in this process, on kombu's in-memory
broker: ticks, sends, failed sends and the hook's own errors, counted as they happen."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.beat import PersistentScheduler, Scheduler
from celery.schedules import schedstate, schedule

from celery_prom.beat.hook import watch
from celery_prom.faults import Faults
from tests.support import unique

HOUR = 3600.0


class UnknowableDue(schedule):  # type: ignore[misc]
    """Always due; its due time cannot be estimated."""

    def is_due(self, last_run_at: datetime.datetime) -> schedstate:
        return schedstate(True, HOUR)

    def remaining_estimate(self, last_run_at: datetime.datetime) -> datetime.timedelta:
        raise RuntimeError("no estimate")


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("cptest-hook", broker="memory://", set_as_current=False)
    # Tasks not registered here: beat sends them by name, as it does for most apps.
    app.conf.update(result_expires=None, task_default_queue=unique("q"))
    yield app
    app.close()


def overdue(scheduler: Scheduler, entry: str, seconds: float) -> None:
    """Make ``entry`` due since ``seconds``: its last run one period (an hour) earlier."""
    item = scheduler.schedule[entry]
    item.last_run_at = item.default_now() - datetime.timedelta(seconds=HOUR + seconds)


def queued(app: Celery) -> int:
    with app.connection_for_write() as connection:
        return int(connection.SimpleQueue(app.conf.task_default_queue).qsize())


def tick_until_idle(scheduler: Any) -> None:
    """Tick until nothing is due (a tick sends one due entry and returns 0)."""
    while scheduler.tick() == 0:
        pass


def test_each_send_is_counted_with_how_late_it_was(app: Celery) -> None:
    app.conf.beat_schedule = {
        "late": {"task": "cptest.noop", "schedule": HOUR},
        "on-time": {"task": "cptest.noop", "schedule": HOUR},
        "later": {"task": "cptest.noop", "schedule": HOUR},
    }
    queued(app)  # declares the queue
    scheduler = Scheduler(app)
    overdue(scheduler, "late", 2.0)
    overdue(scheduler, "later", 20.0)
    feed = watch(scheduler, Faults())

    tick_until_idle(scheduler)

    sent, errors, lateness = feed.recorder.counts()
    assert sent == {("late", "cptest.noop"): 1, ("later", "cptest.noop"): 1}
    assert errors == {}
    assert queued(app) == 2
    assert 2.0 <= lateness["late"].sum < 2.5
    assert 20.0 <= lateness["later"].sum < 20.5
    assert feed.recorder.tick is not None
    assert feed.faults.counts() == {}


def test_a_send_that_fails_is_counted_and_beat_goes_on(app: Celery) -> None:
    app.conf.beat_schedule = {
        "broken": {
            "task": "cptest.noop",
            "schedule": HOUR,
            "options": {"serializer": "no-such-serializer"},
        },
        "fine": {"task": "cptest.noop", "schedule": HOUR},
    }
    queued(app)
    scheduler = Scheduler(app)
    overdue(scheduler, "broken", 1.0)
    overdue(scheduler, "fine", 1.0)
    feed = watch(scheduler, Faults())

    tick_until_idle(scheduler)

    sent, errors, lateness = feed.recorder.counts()
    assert sent == {("fine", "cptest.noop"): 1}
    assert errors == {("broken", "cptest.noop"): 1}
    assert list(lateness) == ["fine"]
    assert queued(app) == 1


def test_an_error_of_the_hook_itself_is_contained_and_the_send_still_counted(
    app: Celery,
) -> None:
    app.conf.beat_schedule = {"odd": {"task": "cptest.noop", "schedule": UnknowableDue(HOUR)}}
    queued(app)
    scheduler = Scheduler(app)
    faults = Faults()
    feed = watch(scheduler, faults)

    assert scheduler.tick() == 0

    sent, _, lateness = feed.recorder.counts()
    assert sent == {("odd", "cptest.noop"): 1}
    assert lateness == {}
    assert faults.reasons() == {"beat": "RuntimeError: no estimate"}
    assert queued(app) == 1


def test_the_scheduler_keeps_its_class(app: Celery, tmp_path: Any) -> None:
    scheduler = PersistentScheduler(app, schedule_filename=str(tmp_path / "schedule"))

    feed = watch(scheduler, Faults())

    assert type(scheduler) is PersistentScheduler
    assert feed.scheduler == "celery.beat.PersistentScheduler"
    scheduler.close()
