"""Timed collectors: a failing one reports itself, and the others still serve."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily

from celery_prom.exporter.collectors import TimedCollectors


class Broken:
    def collect(self) -> Any:
        raise RuntimeError("no")


class Fine:
    def collect(self) -> Any:
        gauge = GaugeMetricFamily("demo_value", "A value.")
        gauge.add_metric((), 3)
        yield gauge


def test_a_failing_collector_reports_itself_and_the_others_still_serve() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TimedCollectors({"broken": Broken(), "fine": Fine()}))
    assert registry.get_sample_value("demo_value") == 3
    assert registry.get_sample_value("celery_prom_collector_success", {"collector": "broken"}) == 0
    assert registry.get_sample_value("celery_prom_collector_success", {"collector": "fine"}) == 1
    assert (
        registry.get_sample_value("celery_prom_collector_duration_seconds", {"collector": "fine"})
        is not None
    )
