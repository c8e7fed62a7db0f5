"""The hook in the scheduler: every tick, every send and every failed send of a beat.

Beat has no bootsteps. ``celery.beat.Service`` builds the scheduler of whatever class is
configured (Celery's ``PersistentScheduler``, django-celery-beat's ``DatabaseScheduler``,
celery-redbeat's ``RedBeatScheduler``, ...) and calls its ``tick()`` in a loop; each
scheduler sends through its own ``apply_async(entry, ...)``: Celery's ``apply_entry`` calls
it, RedBeat's ``maybe_due`` too. Wrapping those two methods on the scheduler instance (not
its class: the class stays the user's) sees every scheduler alike. Checked against Celery
5.3 to 5.7, django-celery-beat 2.9 and celery-redbeat 2.4.

Whatever the hook's own code raises is contained: beat goes on, uncounted.
"""

from __future__ import annotations

import time
from typing import Any

from celery.utils.imports import qualname

from celery_prom.beat.recorder import BeatRecorder
from celery_prom.beat.schedule import ScheduleReader, due_timestamp, reader_for
from celery_prom.beat.snapshot import BeatSnapshot
from celery_prom.faults import BEAT, Faults


class BeatFeed:
    """Everything one beat's metrics come from: what the hook recorded, and the schedule."""

    def __init__(
        self, scheduler: str, recorder: BeatRecorder, reader: ScheduleReader, faults: Faults
    ) -> None:
        self.scheduler = scheduler
        self.recorder = recorder
        self.reader = reader
        self.faults = faults

    def snapshot(self) -> BeatSnapshot:
        sent, errors, lateness = self.recorder.counts()
        reasons = self.faults.reasons()
        return BeatSnapshot(
            scheduler=self.scheduler,
            tick=self.recorder.tick,
            sent=sent,
            errors=errors,
            lateness=lateness,
            entries=self.reader.entries(),
            faults={
                name: (count, reasons.get(name)) for name, count in self.faults.counts().items()
            },
        )


def watch(scheduler: Any, faults: Faults) -> BeatFeed:
    """Record ``scheduler``'s ticks and sends from now on; the feed of its metrics."""
    feed = BeatFeed(qualname(type(scheduler)), BeatRecorder(), reader_for(scheduler), faults)
    tick = scheduler.tick
    apply_async = scheduler.apply_async

    def watched_tick(*args: Any, **kwargs: Any) -> Any:
        try:
            return tick(*args, **kwargs)
        finally:
            with faults.contained(BEAT):
                feed.reader.ticked()
                feed.recorder.ticked()

    def watched_apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
        lateness = None
        with faults.contained(BEAT):
            due = due_timestamp(entry)
            lateness = None if due is None else time.time() - due
        try:
            result = apply_async(entry, *args, **kwargs)
        except Exception:
            with faults.contained(BEAT):
                feed.recorder.failed(str(entry.name), str(entry.task))
            raise
        with faults.contained(BEAT):
            feed.recorder.sent(str(entry.name), str(entry.task), lateness)
        return result

    scheduler.tick = watched_tick
    scheduler.apply_async = watched_apply_async
    return feed
