"""The schedule as the scheduler holds it: next and last runs from Celery's heap, and when an
entry was due, for Celery's own schedules and django-celery-beat's start times."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery import Celery
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab, schedule

from celery_prom.beat.schedule import HeapSchedule, due_timestamp, last_run, reader_for
from celery_prom.beat.snapshot import EntryFacts
from tests.support import unique

UTC = datetime.timezone.utc
NOON = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("cptest-schedule", broker="memory://", set_as_current=False)
    app.conf.update(result_expires=None, task_default_queue=unique("q"))
    yield app
    app.close()


def entry(app: Celery, every: object, last_run_at: datetime.datetime, runs: int) -> ScheduleEntry:
    return ScheduleEntry(
        name="e",
        task="app.t",
        schedule=every,
        last_run_at=last_run_at,
        total_run_count=runs,
        app=app,
    )


def at_noon() -> datetime.datetime:
    return NOON


def test_an_interval_entry_was_due_one_period_after_its_last_run(app: Celery) -> None:
    ran = NOON - datetime.timedelta(seconds=90)
    every_minute = schedule(datetime.timedelta(seconds=60), nowfun=at_noon, app=app)

    due = due_timestamp(entry(app, every_minute, ran, 1))

    assert due == NOON.timestamp() - 30


def test_a_crontab_entry_was_due_at_the_first_minute_after_its_last_run(app: Celery) -> None:
    ran = datetime.datetime(2030, 1, 1, 11, 58, 20, tzinfo=UTC)
    every_minute = crontab(minute="*", app=app, nowfun=at_noon)

    due = due_timestamp(entry(app, every_minute, ran, 1))

    assert due == datetime.datetime(2030, 1, 1, 11, 59, tzinfo=UTC).timestamp()


def test_a_django_entry_with_a_start_time_is_due_at_its_start_time(app: Celery) -> None:
    # django-celery-beat backdates such an entry's last run by 30 years.
    start = NOON - datetime.timedelta(seconds=5)
    every_minute = schedule(60, nowfun=at_noon, app=app)
    backdated = entry(app, every_minute, NOON - datetime.timedelta(days=365 * 30), 0)
    backdated.model = SimpleNamespace(start_time=start)  # type: ignore[attr-defined]

    assert due_timestamp(backdated) == start.timestamp()


def test_an_entry_without_a_last_run_or_an_estimate_has_no_due_time(app: Celery) -> None:
    never = entry(app, schedule(60), NOON, 0)
    never.last_run_at = None

    assert due_timestamp(never) is None


def test_the_last_run_is_the_recorded_one_and_none_before_the_first(app: Celery) -> None:
    naive_utc = datetime.datetime(2030, 1, 1, 12, 0, 0)

    assert last_run(entry(app, schedule(60), naive_utc, 3)) == NOON.timestamp()
    # Celery sets last_run_at to when an entry that never ran was made.
    assert last_run(entry(app, schedule(60), NOON, 0)) is None


def test_the_heap_is_read_as_of_the_last_tick(app: Celery) -> None:
    app.conf.beat_schedule = {
        "hourly": {"task": "app.t", "schedule": 3600.0},
        "daily": {"task": "app.u", "schedule": 86400.0},
    }
    scheduler = Scheduler(app)
    reader = reader_for(scheduler)
    assert isinstance(reader, HeapSchedule)
    assert reader.entries() is None

    scheduler.tick()
    reader.ticked()

    planned = {event.entry.name: event.time for event in scheduler._heap}
    assert sorted(reader.entries() or (), key=lambda facts: facts.entry) == [
        EntryFacts("daily", "app.u", planned["daily"], None),
        EntryFacts("hourly", "app.t", planned["hourly"], None),
    ]
