"""The schedule as the scheduler holds it: each entry's next and last run, and when an entry
was due at the moment beat sends it.

Checked against Celery 5.3 to 5.7 (``Scheduler.tick`` and its heap are the same in all of
them), django-celery-beat 2.9 and celery-redbeat 2.4.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from celery.utils.time import maybe_make_aware

from celery_prom.beat.snapshot import EntryFacts


class ScheduleReader(Protocol):
    def ticked(self) -> None:
        """Called in the scheduler's thread after each tick."""

    def entries(self) -> tuple[EntryFacts, ...] | None:
        """The schedule now; ``None`` until the scheduler ticked. Called at scrape time."""


class HeapSchedule:
    """Schedulers that run Celery's own ``Scheduler.tick`` (Celery's ``PersistentScheduler``,
    django-celery-beat's ``DatabaseScheduler``): the heap of ``(time, priority, entry)`` that
    tick keeps is the plan beat works from, with one event per entry.

    The heap is copied after each tick, when it is complete: within a tick it is rebuilt in
    place whenever the schedule changed.
    """

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self._events: tuple[Any, ...] | None = None

    def ticked(self) -> None:
        heap = getattr(self._scheduler, "_heap", None)
        self._events = None if heap is None else tuple(heap)

    def entries(self) -> tuple[EntryFacts, ...] | None:
        events = self._events
        if events is None:
            return None
        return tuple(
            EntryFacts(str(entry.name), str(entry.task), float(when), last_run(entry))
            for when, _, entry in events
        )


class RedBeatSchedule:
    """celery-redbeat keeps the schedule in Redis, as a sorted set of entry keys scored by
    their due time, and runs its own tick. Only the instance holding RedBeat's lock ticks, so
    one that waits for the lock reports no schedule.
    """

    def __init__(self, scheduler: Any, get_redis: Callable[[Any], Any]) -> None:
        self._scheduler = scheduler
        self._get_redis = get_redis
        self._ticking = False

    def ticked(self) -> None:
        self._ticking = True

    def entries(self) -> tuple[EntryFacts, ...] | None:
        if not self._ticking:
            return None
        app = self._scheduler.app
        scored = self._get_redis(app).zrange(app.redbeat_conf.schedule_key, 0, -1, withscores=True)
        facts = []
        for key, score in scored:
            try:
                entry = self._scheduler.Entry.from_key(key, app=app)
            except KeyError:  # deleted since the range was read
                continue
            # A disabled entry keeps its score but never runs; a negative score means no
            # run is left (RedBeat's own convention).
            due = float(score) if entry.enabled and score >= 0 else None
            facts.append(EntryFacts(str(entry.name), str(entry.task), due, last_run(entry)))
        return tuple(facts)


def reader_for(scheduler: Any) -> ScheduleReader:
    redbeat = sys.modules.get("redbeat.schedulers")  # only imported where it is used
    if redbeat is not None and isinstance(scheduler, redbeat.RedBeatScheduler):
        return RedBeatSchedule(scheduler, redbeat.get_redis)
    return HeapSchedule(scheduler)


def last_run(entry: Any) -> float | None:
    """When the entry last ran, as the scheduler records it (across beat restarts);
    ``None`` if it never ran (Celery then sets ``last_run_at`` to when the entry was made)."""
    if not entry.total_run_count or entry.last_run_at is None:
        return None
    return _timestamp(entry.last_run_at)


def due_timestamp(entry: Any) -> float | None:
    """When ``entry`` became (or becomes) due, given when it last ran; ``None`` if its
    schedule cannot tell (a custom schedule without ``remaining_estimate``, an entry that
    never ran in RedBeat)."""
    if entry.last_run_at is None:
        return None
    schedule = entry.schedule
    try:
        remaining = schedule.remaining_estimate(entry.last_run_at)
    except NotImplementedError:
        return None
    if remaining is None:  # no run left after the last one
        return None
    due = _timestamp(schedule.now() + remaining)
    # django-celery-beat backdates an entry with a start time by 30 years, so that it runs
    # at its start time: that is when it is due.
    start = getattr(getattr(entry, "model", None), "start_time", None)
    if isinstance(start, datetime):
        return max(due, _timestamp(start))
    return due


def _timestamp(moment: datetime) -> float:
    return float(maybe_make_aware(moment).timestamp())
