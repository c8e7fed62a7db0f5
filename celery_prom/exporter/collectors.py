"""The exporter's scrape-time collectors, each timed, none able to fail a scrape."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_prom import metrics
from celery_prom.faults import describe_error
from celery_prom.metrics import new_family

logger = logging.getLogger(__name__)


class TimedCollectors:
    """Runs named collectors, reporting each one's success and duration.

    A collector that raises contributes no samples and ``celery_prom_collector_success 0``;
    the scrape itself always succeeds (the node_exporter convention).
    """

    def __init__(self, collectors: Mapping[str, Collector]) -> None:
        self._collectors = dict(collectors)

    def collect(self) -> Iterator[Metric]:
        success = new_family(metrics.COLLECTOR_SUCCESS, GaugeMetricFamily)
        duration = new_family(metrics.COLLECTOR_DURATION, GaugeMetricFamily)
        for name, collector in self._collectors.items():
            started = time.perf_counter()
            try:
                families = list(collector.collect())
            except Exception as exc:  # noqa: BLE001 - a failing collector must not fail the scrape
                logger.warning("celery-prom: collector %s failed: %s", name, describe_error(exc))
                families = []
                ok = False
            else:
                ok = True
            duration.add_metric((name,), time.perf_counter() - started)
            success.add_metric((name,), 1 if ok else 0)
            yield from families
        yield success
        yield duration
