"""A beat snapshot survives its trip through JSON (the embedded beat's file)."""

from __future__ import annotations

from celery_prom.beat.snapshot import BeatSnapshot


def test_a_snapshot_reads_back_as_it_was_written(ticking: BeatSnapshot) -> None:
    copy = BeatSnapshot.from_json(ticking.to_json())

    assert copy.lateness["every-minute"].buckets == [2, 1, 0]
    assert copy.lateness["every-minute"].sum == 0.6
    assert (copy.scheduler, copy.tick, copy.sent, copy.errors, copy.entries, copy.faults) == (
        ticking.scheduler,
        ticking.tick,
        ticking.sent,
        ticking.errors,
        ticking.entries,
        ticking.faults,
    )


def test_a_beat_that_has_not_ticked_has_no_schedule_after_the_trip_either() -> None:
    snapshot = BeatSnapshot(scheduler="redbeat.schedulers.RedBeatScheduler")

    copy = BeatSnapshot.from_json(snapshot.to_json())

    assert (copy.tick, copy.entries, copy.sent) == (None, None, {})
