"""Events the exporter drops before the recorder sees them, and events that never arrived.

The router drops what it cannot decode or route, liveness refuses worker events it cannot
use, and the loss estimate counts events sent while the exporter was disconnected. They are
served together with the recorder's own counts, as the one
``celery_prom_events_received_total`` and ``celery_prom_events_dropped_total{reason}`` the
worker serves too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from celery_prom.recorder import Recorder, RecorderStats

# Reasons only the exporter reports (the others are in celery_prom.task_event and .recorder):
DROP_RECORDED_BY_WORKER = "recorded_by_worker"  # counted by the worker's own bootstep
DROP_UNDECODABLE = "undecodable"  # not a JSON event message (bad JSON, pickle, bad encoding)
DROP_OFFLINE_WORKER = "offline_worker"  # a late event of a worker already purged
DROP_LOST = "lost"  # sent while the exporter was disconnected (estimated, see losses.py)
DROP_TOO_MANY_WORKERS = "too_many_workers"  # a new hostname past the hostname cap


class DroppedEvents:
    """Counts the events the exporter receives outside the recorder; thread-safe."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._counts = RecorderStats()
        self._lock = threading.Lock()

    def received(self) -> None:
        """An event that arrived and was used outside the recorder (a worker event)."""
        with self._lock:
            self._counts.received += 1

    def drop(self, reason: str) -> None:
        """An event that arrived but is deliberately not recorded."""
        with self._lock:
            self._counts.received += 1
            self._counts.drop(reason)

    def lost(self, events: int) -> None:
        """Events known to have been sent but never received."""
        with self._lock:
            self._counts.drop(DROP_LOST, events)

    def counts(self) -> RecorderStats:
        """The exporter's counts and the recorder's, added up."""
        with self._lock:
            own = self._counts.copy()
        return self._recorder.counts().merged(own)

    def collect(self) -> Iterator[Metric]:
        return self.counts().families()
