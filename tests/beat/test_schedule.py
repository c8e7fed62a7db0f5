"""The schedule as the scheduler holds it: next and last runs from Celery's heap, and when an
entry was due, for Celery's own schedules and django-celery-beat's start times; then each
scheduler end to end, with real beat processes: django-celery-beat's on SQLite, RedBeat's on
Redis."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab, schedule

from celery_prom.beat.schedule import HeapSchedule, due_timestamp, last_run, reader_for
from celery_prom.beat.snapshot import EntryFacts
from tests.support import (
    REPO,
    Broker,
    Scrape,
    app_env,
    running_beat,
    unique,
    wait_for_sends_to_match_the_broker,
)

SENT = "celery_beat_tasks_sent_total"
TASK = "cptest_tasks.noop"

UTC = datetime.timezone.utc
NOON = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


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


def sent(scrape: Scrape, entry: str) -> float:
    return scrape.value(SENT, entry=entry, name=TASK) or 0.0


def next_run(scrape: Scrape, entry: str) -> float:
    return scrape.value("celery_beat_next_run_timestamp_seconds", entry=entry) or 0.0


def change_database_schedule(broker: Broker, env: dict[str, str], *command: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "cptest_beat_db", *command],
        cwd=REPO,
        env=app_env(broker, "unused", **env),
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.slow
def test_django_entries_added_and_changed_while_beat_runs_show_without_a_restart(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    env = {
        "DJANGO_SETTINGS_MODULE": "cptest_beat_db",
        "CPTEST_DB": str(tmp_path / "schedule.sqlite3"),
        "CPTEST_BEAT_SCHEDULER": "django_celery_beat.schedulers:DatabaseScheduler",
    }
    change_database_schedule(own_redis_broker, env, "migrate")
    change_database_schedule(own_redis_broker, env, "put", "every-second", "1")

    with running_beat(own_redis_broker, tmp_path, {}, env=env) as beat:
        beat.wait_for_scrape(lambda s: sent(s, "every-second") >= 2, what="sends")
        change_database_schedule(own_redis_broker, env, "put", "added", "1")
        added = beat.wait_for_scrape(lambda s: sent(s, "added") >= 1, what="the added entry")
        change_database_schedule(own_redis_broker, env, "put", "every-second", "3600")
        changed = beat.wait_for_scrape(
            lambda s: next_run(s, "every-second") > time.time() + 3000, what="the new interval"
        )
        result = wait_for_sends_to_match_the_broker(beat, own_redis_broker)

    scheduler = "django_celery_beat.schedulers.DatabaseScheduler"
    assert result.value("celery_beat_info", scheduler=scheduler) == 1
    assert (added.value("celery_beat_entries"), result.value("celery_beat_entries")) == (2, 2)
    last_run = changed.value("celery_beat_last_run_timestamp_seconds", entry="every-second")
    assert next_run(changed, "every-second") == pytest.approx(last_run + 3600, abs=1)
    # No more sends of the entry that now runs hourly.
    assert sent(result, "every-second") == sent(changed, "every-second")


@pytest.mark.slow
def test_only_the_redbeat_instance_holding_the_lock_reports_sends(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    prefix = own_redis_broker.transport_options["global_keyprefix"]
    env = {
        "CPTEST_BEAT_SCHEDULER": "redbeat.RedBeatScheduler",
        "CPTEST_REDBEAT_PREFIX": f"{prefix}redbeat:",
    }
    queue = unique("q")
    schedule = {"every-second": 1.0}
    with running_beat(own_redis_broker, tmp_path, schedule, queue=queue, env=env) as holder:
        holder.wait_for_scrape(lambda s: sent(s, "every-second") >= 1, what="the holder's sends")
        with running_beat(own_redis_broker, tmp_path, schedule, queue=queue, env=env) as standby:
            before = holder.scrape()
            holder.wait_for_scrape(
                lambda s: sent(s, "every-second") >= sent(before, "every-second") + 2,
                what="more sends while the standby waits",
            )
            waiting = standby.scrape()
            matched = wait_for_sends_to_match_the_broker(holder, own_redis_broker)

            holder.stop()
            took_over = standby.wait_for_scrape(
                lambda s: sent(s, "every-second") >= 1, what="the standby to take over"
            )

    scheduler = "redbeat.schedulers.RedBeatScheduler"
    assert waiting.value("celery_beat_info", scheduler=scheduler) == 1
    beat_families = {name for name, _ in waiting.samples if name.startswith("celery_beat_")}
    assert beat_families == {"celery_beat_info"}
    assert matched.value("celery_beat_entries") == 1
    assert next_run(matched, "every-second") > 0
    assert took_over.value("celery_beat_tick_timestamp_seconds") is not None
