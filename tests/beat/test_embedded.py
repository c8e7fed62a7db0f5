"""``celery worker -B``: the embedded beat's metrics on the worker's own endpoint, through
the snapshot file its process writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from celery.beat import Scheduler

from celery_prom.beat.embedded import SnapshotFile, SnapshotWriter
from celery_prom.beat.hook import watch
from celery_prom.faults import BEAT, Faults
from tests.support import Broker, Scrape, running_worker, wait_for

TASK = "cptest_tasks.noop"


def test_the_worker_reads_what_the_beat_process_wrote(app: Celery, tmp_path: Path) -> None:
    beat_faults = Faults()
    worker_faults = Faults()
    feed = watch(Scheduler(app), beat_faults)
    snapshots = SnapshotFile(tmp_path / "snapshot.json", worker_faults)
    assert snapshots.read() is None  # beat has not started yet

    with beat_faults.contained(BEAT):
        raise ValueError("in the beat process")
    SnapshotWriter(feed, snapshots.path).write()
    snapshot = snapshots.read()

    assert snapshot is not None
    assert (snapshot.scheduler, snapshot.tick, snapshot.entries) == (
        "celery.beat.Scheduler",
        None,
        None,
    )
    # The beat process's errors count on the worker's endpoint.
    assert worker_faults.counts() == {"beat": 1}
    assert worker_faults.reasons() == {"beat": "ValueError: in the beat process"}


def test_the_writer_ends_quietly_once_the_worker_removed_its_directory(
    app: Celery, tmp_path: Path
) -> None:
    directory = tmp_path / "snapshots"
    directory.mkdir()
    faults = Faults()
    writer = SnapshotWriter(watch(Scheduler(app), faults), directory / "snapshot.json", 0.01)

    thread = writer.start()
    wait_for((directory / "snapshot.json").exists, what="a first snapshot")
    directory.rename(tmp_path / "removed")  # as the worker does
    thread.join(10)

    assert not thread.is_alive()
    assert faults.counts() == {}


def beat_counts(scrape: Scrape) -> tuple[float, float]:
    """(beat's sends, the worker's successes) of the test task."""
    return (
        scrape.total("celery_beat_tasks_sent_total", entry="every-second", name=TASK),
        scrape.total("celery_task_succeeded_total", name=TASK),
    )


@pytest.mark.slow
def test_a_worker_run_with_beat_serves_its_beats_metrics(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    with running_worker(
        own_redis_broker,
        tmp_path,
        pool="threads",
        concurrency=1,
        app_module="cptest_beat",
        extra_args=("-B", "-s", str(tmp_path / "schedule")),
        env={"CPTEST_BEAT_SCHEDULE": '{"every-second": 1}', "TMPDIR": str(tmp_path)},
    ) as worker:
        worker.wait_for_scrape(lambda s: beat_counts(s)[0] >= 3, what="three sends")
        # Every task beat sent, the worker ran (the snapshot is at most a second old).
        result = worker.wait_for_scrape(
            lambda s: beat_counts(s)[0] == beat_counts(s)[1], what="sends to match successes"
        )
        snapshot_directories = list(tmp_path.glob("celery-prom-beat-*"))

    assert result.value("celery_beat_info", scheduler="celery.beat.PersistentScheduler") == 1
    assert result.value("celery_beat_entries") == 1
    assert (
        result.value("celery_beat_lateness_seconds_count", entry="every-second")
        == (beat_counts(result)[0])
    )
    assert result.value("celery_prom_errors_total", component="beat") is None
    assert len(snapshot_directories) == 1
    assert list(tmp_path.glob("celery-prom-beat-*")) == []
