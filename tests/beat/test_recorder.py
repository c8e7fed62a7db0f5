"""What beat did, per entry: sends, send errors, lateness in buckets, ticks, capped entries."""

from __future__ import annotations

from celery_prom.beat.recorder import BeatRecorder
from celery_prom.metrics import OVERFLOW_LABEL_VALUE

BOUNDS = (0.1, 1.0, 10.0)


def test_sends_and_errors_are_counted_per_entry_and_task() -> None:
    recorder = BeatRecorder(BOUNDS)
    recorder.sent("nightly", "app.report", 0.0)
    recorder.sent("nightly", "app.report", 0.0)
    recorder.sent("hourly", "app.sync", 0.0)
    recorder.failed("hourly", "app.sync")

    sent, errors, _ = recorder.counts()

    assert sent == {("nightly", "app.report"): 2, ("hourly", "app.sync"): 1}
    assert errors == {("hourly", "app.sync"): 1}


def test_lateness_falls_into_its_bucket_and_early_sends_count_as_on_time() -> None:
    recorder = BeatRecorder(BOUNDS)
    for lateness in (-0.004, 0.05, 0.1, 0.5, 30.0):
        recorder.sent("e", "t", lateness)
    recorder.sent("e", "t", None)  # the due time was unknown: sent, but not observed

    sent, _, lateness_by_entry = recorder.counts()

    assert sent == {("e", "t"): 6}
    assert lateness_by_entry["e"].buckets == [3, 1, 0, 1]
    assert lateness_by_entry["e"].sum == 30.65


def test_the_tick_is_the_clocks_time_of_the_last_one() -> None:
    now = iter([100.0, 105.5])
    recorder = BeatRecorder(BOUNDS, clock=lambda: next(now))
    assert recorder.tick is None

    recorder.ticked()
    recorder.ticked()

    assert recorder.tick == 105.5


def test_entries_past_the_cap_and_overlong_names_count_under_the_overflow_value() -> None:
    recorder = BeatRecorder(BOUNDS, max_entries=2)
    for entry in ("a", "b", "c", "a", "x" * 300):
        recorder.sent(entry, "t", 1.0)
    recorder.failed("d", "t")

    sent, errors, lateness = recorder.counts()

    assert sent == {("a", "t"): 2, ("b", "t"): 1, (OVERFLOW_LABEL_VALUE, "t"): 2}
    assert errors == {(OVERFLOW_LABEL_VALUE, "t"): 1}
    assert sorted(lateness) == [OVERFLOW_LABEL_VALUE, "a", "b"]


def test_counts_are_copies() -> None:
    recorder = BeatRecorder(BOUNDS)
    recorder.sent("e", "t", 0.5)
    _, _, before = recorder.counts()

    recorder.sent("e", "t", 0.5)

    assert before["e"].buckets == [0, 1, 0, 0]
