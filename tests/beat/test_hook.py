"""The scheduler hook on a real Celery scheduler, in this process, on kombu's in-memory
broker: ticks, sends, failed sends and the hook's own errors, counted as they happen."""

from __future__ import annotations

import datetime
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler, Scheduler
from celery.schedules import schedstate, schedule

from celery_prom.beat.hook import BeatFeed, watch
from celery_prom.faults import Faults

HOUR = 3600.0
HOURLY = {"task": "cptest.noop", "schedule": HOUR}


class UnknowableDue(schedule):  # type: ignore[misc]
    """Due an hour after the last run, as beat sees it; its due time cannot be estimated."""

    def is_due(self, last_run_at: datetime.datetime) -> schedstate:
        since = self.now() - self.maybe_make_aware(last_run_at)
        return schedstate(since >= datetime.timedelta(seconds=HOUR), HOUR)

    def remaining_estimate(self, last_run_at: datetime.datetime) -> datetime.timedelta:
        raise RuntimeError("no estimate")


def queued(app: Celery) -> int:
    with app.connection_for_write() as connection:
        return int(connection.SimpleQueue(app.conf.task_default_queue).qsize())


def run_overdue(app: Celery, entries: dict[str, Any], overdue: dict[str, float]) -> BeatFeed:
    """Schedule ``entries``, the ``overdue`` ones due since so many seconds (they last ran
    an hour earlier), hook the scheduler and tick until nothing is due."""
    app.conf.beat_schedule = entries
    queued(app)  # declares the queue
    scheduler = Scheduler(app)
    for name, seconds in overdue.items():
        entry = scheduler.schedule[name]
        entry.last_run_at = entry.default_now() - datetime.timedelta(seconds=HOUR + seconds)
    feed = watch(scheduler, Faults())
    while scheduler.tick() == 0:  # a tick sends one due entry and returns 0
        pass
    return feed


def test_each_send_is_counted_with_how_late_it_was(app: Celery) -> None:
    feed = run_overdue(
        app,
        {"late": HOURLY, "on-time": HOURLY, "later": HOURLY},
        {"late": 2.0, "later": 20.0},
    )

    sent, errors, lateness = feed.recorder.counts()
    assert sent == {("late", "cptest.noop"): 1, ("later", "cptest.noop"): 1}
    assert errors == {}
    assert queued(app) == 2
    assert 2.0 <= lateness["late"].sum < 2.5
    assert 20.0 <= lateness["later"].sum < 20.5
    assert feed.recorder.tick is not None
    assert feed.faults.counts() == {}


def test_a_send_that_fails_is_counted_and_beat_goes_on(app: Celery) -> None:
    unsendable = {**HOURLY, "options": {"serializer": "no-such-serializer"}}

    feed = run_overdue(app, {"broken": unsendable, "fine": HOURLY}, {"broken": 1, "fine": 1})

    sent, errors, lateness = feed.recorder.counts()
    assert sent == {("fine", "cptest.noop"): 1}
    assert errors == {("broken", "cptest.noop"): 1}
    assert list(lateness) == ["fine"]
    assert queued(app) == 1


def test_an_error_of_the_hook_itself_is_contained_and_the_send_still_counted(
    app: Celery,
) -> None:
    odd = {"task": "cptest.noop", "schedule": UnknowableDue(HOUR)}

    feed = run_overdue(app, {"odd": odd}, {"odd": 1.0})

    sent, _, lateness = feed.recorder.counts()
    assert sent == {("odd", "cptest.noop"): 1}
    assert lateness == {}
    assert feed.faults.reasons() == {"beat": "RuntimeError: no estimate"}
    assert queued(app) == 1


def test_the_scheduler_keeps_its_class(app: Celery, tmp_path: Any) -> None:
    scheduler = PersistentScheduler(app, schedule_filename=str(tmp_path / "schedule"))

    feed = watch(scheduler, Faults())

    assert type(scheduler) is PersistentScheduler
    assert feed.scheduler == "celery.beat.PersistentScheduler"
    scheduler.close()
