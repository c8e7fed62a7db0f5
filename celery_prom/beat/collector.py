"""Beat's metric families, built fresh from a snapshot at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from celery_prom import metrics
from celery_prom.beat.snapshot import BeatSnapshot, EntryCounts
from celery_prom.metrics import Family, new_family
from celery_prom.store import cumulative_buckets


class BeatCollector:
    """Renders the snapshot ``source`` gives; nothing while it gives none."""

    def __init__(
        self,
        source: Callable[[], BeatSnapshot | None],
        bounds: tuple[float, ...] = metrics.DEFAULT_BEAT_LATENESS_BUCKETS,
    ) -> None:
        self._source = source
        self._bounds = bounds

    def collect(self) -> Iterator[Metric]:
        snapshot = self._source()
        if snapshot is None:
            return
        info = new_family(metrics.BEAT_INFO, GaugeMetricFamily)
        info.add_metric((snapshot.scheduler,), 1)
        yield info
        # Entries of the schedule that sent nothing yet count 0, so that their first send
        # is an increase Prometheus sees.
        scheduled = {(facts.entry, facts.name): 0 for facts in snapshot.entries or ()}
        yield _counter(metrics.BEAT_TASKS_SENT, {**scheduled, **snapshot.sent})
        yield _counter(metrics.BEAT_SEND_ERRORS, {**scheduled, **snapshot.errors})
        lateness = new_family(metrics.BEAT_LATENESS, HistogramMetricFamily)
        for entry, histogram in sorted(snapshot.lateness.items()):
            lateness.add_metric(
                (entry,),
                buckets=cumulative_buckets(self._bounds, histogram.buckets),
                sum_value=histogram.sum,
            )
        yield lateness
        if snapshot.tick is not None:
            tick = new_family(metrics.BEAT_TICK, GaugeMetricFamily)
            tick.add_metric((), snapshot.tick)
            yield tick
        if snapshot.entries is not None:
            yield from _schedule(snapshot)


def _counter(family: Family, counts: EntryCounts) -> CounterMetricFamily:
    counter = new_family(family, CounterMetricFamily)
    for labels, count in sorted(counts.items()):
        counter.add_metric(labels, count)
    return counter


def _schedule(snapshot: BeatSnapshot) -> Iterator[Metric]:
    entries = snapshot.entries or ()
    count = new_family(metrics.BEAT_ENTRIES, GaugeMetricFamily)
    count.add_metric((), len(entries))
    next_run = new_family(metrics.BEAT_NEXT_RUN, GaugeMetricFamily)
    last_run = new_family(metrics.BEAT_LAST_RUN, GaugeMetricFamily)
    for facts in sorted(entries, key=lambda facts: facts.entry):
        if facts.next_run is not None:
            next_run.add_metric((facts.entry,), facts.next_run)
        if facts.last_run is not None:
            last_run.add_metric((facts.entry,), facts.last_run)
    yield from (count, next_run, last_run)
