"""``celery worker -B``: the embedded beat's metrics on the worker's own endpoint.

Celery runs an embedded beat in a child process the worker forks (in a thread of the worker
where multiprocessing is missing), and that child closes every descriptor it inherited
before it starts the scheduler. So the two meet on a file: the beat process writes a
snapshot of its metrics every ``SNAPSHOT_INTERVAL`` seconds, and the worker's endpoint reads
the latest at each scrape. A beat process that died leaves its last snapshot, with a tick
time that grows old, which is what the beat alerts look at.

Checked against Celery 5.3 to 5.7: the worker's ``Beat`` step makes the service
(``celery.beat.EmbeddedService``) when the worker is built and starts it with the other
steps; ``beat_init`` is sent in the beat process with the service as sender.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from celery import bootsteps

from celery_prom.beat.collector import BeatCollector
from celery_prom.beat.hook import BeatFeed, watch
from celery_prom.beat.snapshot import BeatSnapshot
from celery_prom.endpoint_extras import offered
from celery_prom.faults import BEAT, Faults

#: Seconds between two snapshots of an embedded beat.
SNAPSHOT_INTERVAL = 1.0
#: Attribute of the embedded ``celery.beat.Service``: the snapshot file's path, or ``None``
#: when the worker serves no metrics. Absent on a standalone beat's service.
_SNAPSHOT_ATTRIBUTE = "celery_prom_snapshot"


class EmbeddedBeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker step: the embedded beat (``-B``) writes snapshots that the worker serves.

    It requires Celery's ``Beat`` step, so it runs after the service exists and before the
    worker starts it.
    """

    label = "celery-prom beat"
    requires = ("celery.worker.components:Beat",)

    def __init__(self, w: Any, **kwargs: Any) -> None:
        self.directory: Path | None = None
        super().__init__(w, **kwargs)

    def include_if(self, w: Any) -> bool:
        return getattr(w, "beat", None) is not None

    def create(self, w: Any) -> None:
        extras = offered(w)
        if extras is None:  # the worker serves no metrics, so its beat has nowhere to
            setattr(w.beat.service, _SNAPSHOT_ATTRIBUTE, None)
            return
        self.directory = Path(tempfile.mkdtemp(prefix="celery-prom-beat-"))
        snapshots = SnapshotFile(self.directory / "snapshot.json", extras.faults)
        setattr(w.beat.service, _SNAPSHOT_ATTRIBUTE, str(snapshots.path))
        extras.add(BeatCollector(snapshots.read))

    def stop(self, w: Any) -> None:
        # The beat process stops after this step. Moved away first, the directory is gone
        # for its writer at once: a write it tries then fails and ends the writer quietly.
        if self.directory is not None:
            removed = self.directory.with_name(f"{self.directory.name}.removed")
            with contextlib.suppress(OSError):
                self.directory.rename(removed)
                shutil.rmtree(removed)
            self.directory = None

    def terminate(self, w: Any) -> None:
        self.stop(w)

    def shutdown(self, w: Any) -> None:
        self.stop(w)


def is_embedded(service: Any) -> bool:
    """Whether ``service`` is a worker's embedded beat (one this step has seen)."""
    return hasattr(service, _SNAPSHOT_ATTRIBUTE)


def write_snapshots(service: Any) -> SnapshotWriter | None:
    """In an embedded beat's process: watch its scheduler and write the snapshots the
    worker serves; nothing when the worker serves no metrics."""
    path = getattr(service, _SNAPSHOT_ATTRIBUTE)
    if path is None:
        return None
    writer = SnapshotWriter(watch(service.scheduler, Faults()), Path(path))
    writer.start()
    return writer


class SnapshotFile:
    """The snapshot file the worker reads; errors the beat process counted become the
    worker's."""

    def __init__(self, path: Path, faults: Faults) -> None:
        self.path = path
        self._faults = faults

    def read(self) -> BeatSnapshot | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:  # beat has not started yet
            return None
        snapshot = BeatSnapshot.from_json(text)
        for component, (count, reason) in snapshot.faults.items():
            self._faults.mirror(component, count, reason)
        return snapshot


class SnapshotWriter:
    """In the beat process: writes the feed's snapshot every ``interval`` seconds."""

    def __init__(self, feed: BeatFeed, path: Path, interval: float = SNAPSHOT_INTERVAL) -> None:
        self._feed = feed
        self._path = path
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(
            target=self._write_until_stopped, name="celery-prom-beat-snapshots", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def write(self) -> None:
        """Replace the file at once, so that the worker never reads half a snapshot."""
        partial = self._path.with_name(f"{self._path.name}.partial")
        partial.write_text(self._feed.snapshot().to_json(), encoding="utf-8")
        os.replace(partial, self._path)

    def _write_until_stopped(self) -> None:
        while True:
            try:
                self.write()
            except FileNotFoundError:  # the worker removed the directory: it is stopping
                return
            except Exception as error:  # noqa: BLE001 - the loop must outlive any error
                self._feed.faults.record(BEAT, error)
            if self._stopping.wait(self._interval):
                return
