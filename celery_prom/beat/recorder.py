"""What beat did, per schedule entry: ticks, sends, send errors and how late each send was.

The scheduler records from its own thread; scrapes read from theirs.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable

from celery_prom import metrics
from celery_prom.metrics import MAX_LABEL_VALUE_LENGTH, OVERFLOW_LABEL_VALUE
from celery_prom.store import CappedValues, Histogram

#: Distinct entries counted; sends of entries past the cap count under the overflow value.
#: A database schedule may create and delete entries for as long as beat runs.
MAX_ENTRIES = 2000


class BeatRecorder:
    def __init__(
        self,
        bounds: tuple[float, ...] = metrics.DEFAULT_BEAT_LATENESS_BUCKETS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bounds = bounds
        self._entries = CappedValues(max_entries)
        self._clock = clock
        self._tick: float | None = None
        self._sent: dict[tuple[str, str], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._lateness: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    def ticked(self) -> None:
        self._tick = self._clock()

    def sent(self, entry: str, name: str, lateness: float | None) -> None:
        """A task of ``entry`` was sent, ``lateness`` seconds after it was due (if known)."""
        with self._lock:
            key = self._key(entry, name)
            self._sent[key] = self._sent.get(key, 0) + 1
            if lateness is not None:
                histogram = self._lateness.get(key[0])
                if histogram is None:
                    histogram = self._lateness[key[0]] = Histogram(len(self._bounds) + 1)
                observed = max(lateness, 0.0)  # beat wakes a few milliseconds early
                histogram.buckets[bisect_left(self._bounds, observed)] += 1
                histogram.sum += observed

    def failed(self, entry: str, name: str) -> None:
        with self._lock:
            key = self._key(entry, name)
            self._errors[key] = self._errors.get(key, 0) + 1

    @property
    def tick(self) -> float | None:
        return self._tick

    def counts(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], dict[str, Histogram]]:
        """Copies of the sends, send errors and lateness histograms."""
        with self._lock:
            return (
                dict(self._sent),
                dict(self._errors),
                {entry: histogram.copy() for entry, histogram in self._lateness.items()},
            )

    def _key(self, entry: str, name: str) -> tuple[str, str]:
        if len(entry) > MAX_LABEL_VALUE_LENGTH:
            return OVERFLOW_LABEL_VALUE, name
        return self._entries.admit(entry), name
