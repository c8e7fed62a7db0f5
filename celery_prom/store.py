"""Compact, thread-safe storage of the per-task series (counters and histograms).

One ``TaskSeries`` per (task name, hostname, queue) holds every task family's values, so
recording an event touches one object under one lock, and the renderer can cache the text
of series that did not change since the last scrape.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from celery_prom import metrics
from celery_prom.metrics import (
    OVERFLOW_LABEL_VALUE,
    TASK_COUNTERS,
    LabelLimits,
    bucket_bounds,
    new_family,
)

SeriesKey = tuple[str, str, str]

#: Index of each outcome counter inside ``TaskSeries.counters``.
RECEIVED, STARTED, SUCCEEDED, RETRIED, REVOKED, REJECTED, REPLACED, IGNORED = range(
    len(TASK_COUNTERS)
)


#: The exemplar label naming the task of an observation.
EXEMPLAR_LABEL = "task_id"
#: OpenMetrics caps an exemplar's label names and values at 128 UTF-8 characters together.
MAX_EXEMPLAR_TASK_ID = 128 - len(EXEMPLAR_LABEL)


#: The latest observation of one bucket: (task id, value, Unix time). A plain tuple: it is
#: made on every observation, and a NamedTuple's constructor costs twice as much.
TaskExemplar = tuple[str, float, float]


class Histogram:
    """Per-bucket (not cumulative) observation counts, their sum, and each bucket's
    latest observation that named its task."""

    __slots__ = ("buckets", "exemplars", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.exemplars: list[TaskExemplar | None] = [None] * size
        self.sum = 0.0

    def copy(self) -> Histogram:
        clone = Histogram(0)
        clone.buckets = self.buckets.copy()
        clone.exemplars = self.exemplars.copy()
        clone.sum = self.sum
        return clone


class TaskSeries:
    """Every task family's values for one (name, hostname, queue_name)."""

    __slots__ = ("counters", "failures", "key", "queue_wait", "runtime", "version")

    def __init__(self, key: SeriesKey, runtime_size: int, wait_size: int) -> None:
        self.key = key
        self.counters = [0] * len(TASK_COUNTERS)
        self.failures: dict[str, int] = {}
        self.runtime = Histogram(runtime_size)
        self.queue_wait = Histogram(wait_size)
        self.version = 0


@dataclass(frozen=True)
class SeriesSnapshot:
    """A consistent copy of one series, taken under the store's lock."""

    key: SeriesKey
    version: int
    counters: tuple[int, ...]
    failures: tuple[tuple[str, int], ...]
    runtime: Histogram
    queue_wait: Histogram


@dataclass
class CappedValues:
    """Distinct values seen for one label, admitted up to a cap."""

    cap: int
    values: set[str] = field(default_factory=set)
    overflowed: int = 0

    def admit(self, value: str) -> str:
        if value in self.values:
            return value
        if len(self.values) < self.cap:
            self.values.add(value)
            return value
        self.overflowed += 1
        return OVERFLOW_LABEL_VALUE


class TaskStore:
    """The task series of one endpoint. All methods are safe to call from any thread."""

    def __init__(
        self,
        runtime_buckets: Sequence[float] = metrics.DEFAULT_RUNTIME_BUCKETS,
        queue_wait_buckets: Sequence[float] = metrics.DEFAULT_QUEUE_WAIT_BUCKETS,
        limits: LabelLimits | None = None,
    ) -> None:
        self.runtime_bounds = bucket_bounds(runtime_buckets)
        self.queue_wait_bounds = bucket_bounds(queue_wait_buckets)
        limits = limits or LabelLimits()
        self._names = CappedValues(limits.task_names)
        self._queues = CappedValues(limits.queues)
        self._hostnames = CappedValues(limits.hostnames)
        self._exceptions = CappedValues(limits.exceptions)
        self._series: dict[SeriesKey, TaskSeries] = {}
        #: Whether a series arrived since ``_series`` was last put in key order.
        self._unsorted = False
        self._lock = threading.Lock()

    # -- recording -------------------------------------------------------------------------

    def count(self, key: SeriesKey, counter: int) -> None:
        with self._lock:
            series = self._series_for(key)
            series.counters[counter] += 1
            series.version += 1

    def count_failure(self, key: SeriesKey, exception: str) -> None:
        with self._lock:
            series = self._series_for(key)
            exception = self._exceptions.admit(exception)
            series.failures[exception] = series.failures.get(exception, 0) + 1
            series.version += 1

    def count_success(
        self, key: SeriesKey, runtime: float | None, task_id: str | None = None
    ) -> None:
        """A success, and its runtime observed (with ``task_id`` as exemplar) if known."""
        with self._lock:
            series = self._series_for(key)
            series.counters[SUCCEEDED] += 1
            if runtime is not None:
                _observe(series.runtime, self.runtime_bounds, runtime, task_id)
            series.version += 1

    def count_start(
        self, key: SeriesKey, queue_wait: float | None, task_id: str | None = None
    ) -> None:
        """A start, and its queue wait observed (with ``task_id`` as exemplar) if known."""
        with self._lock:
            series = self._series_for(key)
            series.counters[STARTED] += 1
            if queue_wait is not None:
                _observe(series.queue_wait, self.queue_wait_bounds, queue_wait, task_id)
            series.version += 1

    def forget_hostname(self, hostname: str) -> int:
        """Drop every series of ``hostname`` (an offline worker); returns how many."""
        with self._lock:
            doomed = [key for key in self._series if key[1] == hostname]
            for key in doomed:
                del self._series[key]
            self._hostnames.values.discard(hostname)
            return len(doomed)

    # -- reading ---------------------------------------------------------------------------

    def versions(self) -> list[tuple[SeriesKey, int]]:
        """Each series' key and version, sorted by key (the exposition order)."""
        with self._lock:
            if self._unsorted:
                # Sorted once per new series rather than on every scrape: the set of series
                # rarely changes, and sorting 2,000 keys costs a scrape about a millisecond.
                self._series = dict(sorted(self._series.items()))  # keys are unique
                self._unsorted = False
            return [(key, series.version) for key, series in self._series.items()]

    def snapshot(self, key: SeriesKey) -> SeriesSnapshot | None:
        with self._lock:
            series = self._series.get(key)
            if series is None:
                return None
            return SeriesSnapshot(
                key=key,
                version=series.version,
                counters=tuple(series.counters),
                failures=tuple(sorted(series.failures.items())),
                runtime=series.runtime.copy(),
                queue_wait=series.queue_wait.copy(),
            )

    def overflow_counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "name": self._names.overflowed,
                "queue_name": self._queues.overflowed,
                "hostname": self._hostnames.overflowed,
                "exception": self._exceptions.overflowed,
            }

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's Collector protocol, for embedding the store in a registry.

        The endpoints render through ``exposition.TaskExposition`` instead, which is the
        same text produced incrementally.
        """
        snapshots = [s for key, _ in self.versions() if (s := self.snapshot(key))]
        for index, family in enumerate(TASK_COUNTERS):
            counter = new_family(family, CounterMetricFamily)
            for snap in snapshots:
                counter.add_metric(snap.key, snap.counters[index])
            yield counter
        failed = new_family(metrics.TASK_FAILED, CounterMetricFamily)
        for snap in snapshots:
            for exception, value in snap.failures:
                failed.add_metric((*snap.key, exception), value)
        yield failed
        for family, bounds, pick in (
            (metrics.TASK_RUNTIME, self.runtime_bounds, _runtime_of),
            (metrics.TASK_QUEUE_WAIT, self.queue_wait_bounds, _queue_wait_of),
        ):
            histogram = new_family(family, HistogramMetricFamily)
            for snap in snapshots:
                values = pick(snap)
                histogram.add_metric(snap.key, _buckets_with_exemplars(bounds, values), values.sum)
            yield histogram

    # -- internals -------------------------------------------------------------------------

    def _series_for(self, key: SeriesKey) -> TaskSeries:
        series = self._series.get(key)
        if series is not None:
            return series
        name, hostname, queue = key
        capped = (
            self._names.admit(name),
            self._hostnames.admit(hostname),
            self._queues.admit(queue),
        )
        series = self._series.get(capped)
        if series is None:
            series = TaskSeries(
                capped, len(self.runtime_bounds) + 1, len(self.queue_wait_bounds) + 1
            )
            self._series[capped] = series
            self._unsorted = True
        return series


def cumulative_buckets(bounds: Sequence[float], buckets: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus' cumulative ``le`` buckets from per-bucket counts (last is ``+Inf``)."""
    result: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*bounds, float("inf")), buckets, strict=True):
        total += count
        result.append((format_value(bound), total))
    return result


def format_value(value: float) -> str:
    """A sample value or bucket bound spelled as Prometheus (and Go) spell floats."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _runtime_of(snap: SeriesSnapshot) -> Histogram:
    return snap.runtime


def _queue_wait_of(snap: SeriesSnapshot) -> Histogram:
    return snap.queue_wait


def _buckets_with_exemplars(
    bounds: Sequence[float], histogram: Histogram
) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
    return [
        bucket if exemplar is None else (*bucket, _client_exemplar(exemplar))
        for bucket, exemplar in zip(
            cumulative_buckets(bounds, histogram.buckets), histogram.exemplars, strict=True
        )
    ]


def _client_exemplar(exemplar: TaskExemplar) -> Exemplar:
    task_id, value, timestamp = exemplar
    return Exemplar({EXEMPLAR_LABEL: task_id}, value, timestamp)


def _observe(
    histogram: Histogram, bounds: tuple[float, ...], value: float, task_id: str | None
) -> None:
    index = bisect_left(bounds, value)
    histogram.buckets[index] += 1
    histogram.sum += value
    # An id too long to be shown leaves the bucket's previous exemplar in place.
    if task_id is not None and len(task_id) <= MAX_EXEMPLAR_TASK_ID:
        histogram.exemplars[index] = (task_id, value, time.time())


class LabelOverflowCollector:
    """Exposes how many label values each cardinality cap replaced."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        counter = new_family(metrics.LABEL_OVERFLOW, CounterMetricFamily)
        for label, count in sorted(self._store.overflow_counts().items()):
            counter.add_metric((label,), count)
        yield counter
