"""Beat's families from a snapshot: what a beat shows before and after its first tick."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from celery_prom.beat.collector import BeatCollector
from celery_prom.beat.snapshot import BeatSnapshot
from tests.support import Scrape, promtool_check_metrics

BOUNDS = (0.1, 1.0)


def scrape(snapshot: BeatSnapshot | None) -> Scrape:
    registry = CollectorRegistry()
    registry.register(BeatCollector(lambda: snapshot, BOUNDS))
    return Scrape(generate_latest(registry).decode("utf-8"))


def test_a_ticking_beat_shows_its_sends_lateness_and_schedule(ticking: BeatSnapshot) -> None:
    result = scrape(ticking)

    assert result.samples == {
        ("celery_beat_info", frozenset({("scheduler", "celery.beat.PersistentScheduler")})): 1,
        **{
            (name, frozenset({("entry", entry), ("name", task)})): value
            for name, entry, task, value in [
                ("celery_beat_tasks_sent_total", "every-minute", "app.sync", 3),
                # Scheduled entries that sent nothing yet count 0.
                ("celery_beat_tasks_sent_total", "nightly", "app.report", 0),
                ("celery_beat_send_errors_total", "every-minute", "app.sync", 1),
                ("celery_beat_send_errors_total", "nightly", "app.report", 0),
            ]
        },
        **{
            ("celery_beat_lateness_seconds_bucket", frozenset({("entry", "every-minute"), le})): v
            for le, v in [(("le", "0.1"), 2), (("le", "1.0"), 3), (("le", "+Inf"), 3)]
        },
        ("celery_beat_lateness_seconds_count", frozenset({("entry", "every-minute")})): 3,
        ("celery_beat_lateness_seconds_sum", frozenset({("entry", "every-minute")})): 0.6,
        ("celery_beat_tick_timestamp_seconds", frozenset()): 1700000001.0,
        ("celery_beat_entries", frozenset()): 2,
        ("celery_beat_next_run_timestamp_seconds", frozenset({("entry", "every-minute")})): (
            1700000060.0
        ),
        ("celery_beat_next_run_timestamp_seconds", frozenset({("entry", "nightly")})): 1700050000,
        # The nightly entry never ran: no last run.
        ("celery_beat_last_run_timestamp_seconds", frozenset({("entry", "every-minute")})): (
            1700000000.0
        ),
    }


def test_a_beat_before_its_first_tick_shows_only_what_it_is() -> None:
    result = scrape(BeatSnapshot(scheduler="redbeat.schedulers.RedBeatScheduler"))

    assert {name for name, _ in result.samples} == {"celery_beat_info"}


def test_no_snapshot_no_families() -> None:
    assert scrape(None).samples == {}


def test_the_exposition_passes_promtool(ticking: BeatSnapshot) -> None:
    assert promtool_check_metrics(scrape(ticking).text) == []
