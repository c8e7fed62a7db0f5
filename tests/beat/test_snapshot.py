"""A beat snapshot survives its trip through JSON (the embedded beat's file)."""

from __future__ import annotations

from celery_prom.beat.snapshot import BeatSnapshot, EntryFacts
from celery_prom.store import Histogram


def test_a_snapshot_reads_back_as_it_was_written() -> None:
    lateness = Histogram(3)
    lateness.buckets = [1, 0, 2]
    lateness.sum = 7.25
    snapshot = BeatSnapshot(
        scheduler="celery.beat.PersistentScheduler",
        tick=1700000000.5,
        sent={("nightly", "app.report"): 3},
        errors={("nightly", "app.report"): 1},
        lateness={"nightly": lateness},
        entries=(
            EntryFacts("nightly", "app.report", 1700003600.0, 1700000000.25),
            EntryFacts("never-ran", "app.sync", None, None),
        ),
        faults={"beat": (2, "ValueError: boom")},
    )

    copy = BeatSnapshot.from_json(snapshot.to_json())

    assert copy.lateness["nightly"].buckets == [1, 0, 2]
    assert copy.lateness["nightly"].sum == 7.25
    assert (copy.scheduler, copy.tick, copy.sent, copy.errors, copy.entries, copy.faults) == (
        snapshot.scheduler,
        snapshot.tick,
        snapshot.sent,
        snapshot.errors,
        snapshot.entries,
        snapshot.faults,
    )


def test_a_beat_that_has_not_ticked_has_no_schedule_after_the_trip_either() -> None:
    snapshot = BeatSnapshot(scheduler="redbeat.schedulers.RedBeatScheduler")

    copy = BeatSnapshot.from_json(snapshot.to_json())

    assert (copy.tick, copy.entries, copy.sent) == (None, None, {})
