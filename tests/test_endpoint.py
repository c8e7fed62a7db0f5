"""The endpoint assembly: the task series and the registry on one page, and its health."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from celery_prom.config import WorkerSettings
from celery_prom.endpoint import MetricsEndpoint
from celery_prom.http import HealthReport
from celery_prom.store import RECEIVED


class Demo:
    """A collector that counts its scrapes and fails when told to."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.fail = False

    def collect(self) -> Iterator[Metric]:
        self.scrapes += 1
        if self.fail:
            raise RuntimeError("broken\nsecond line")
        gauge = GaugeMetricFamily("demo_value", "A value.")
        gauge.add_metric((), 3)
        yield gauge


@pytest.fixture
def demo() -> Demo:
    return Demo()


@pytest.fixture
def endpoint(demo: Demo) -> MetricsEndpoint:
    endpoint = MetricsEndpoint(WorkerSettings(runtime_buckets=(1.0,)))
    endpoint.registry.register(demo)
    return endpoint


def test_the_page_is_the_task_series_then_the_registry(endpoint: MetricsEndpoint) -> None:
    endpoint.store.count(("app.add", "w@h", "celery"), RECEIVED)

    text = endpoint.render(openmetrics=False)

    task = 'celery_task_received_total{name="app.add",hostname="w@h",queue_name="celery"} 1.0\n'
    assert text.index(task) < text.index("\ndemo_value 3.0\n")
    assert endpoint.store.runtime_bounds == (1.0,)


def test_health_adds_the_last_render_to_the_feeds_checks_and_renders_nothing(
    endpoint: MetricsEndpoint, demo: Demo
) -> None:
    assert endpoint.health(True, {"tap": "installed"}) == HealthReport(
        True, {"tap": "installed", "metrics": "ok"}
    )
    demo.fail = True
    with pytest.raises(RuntimeError):
        endpoint.render(openmetrics=False)

    assert endpoint.health(True, {}) == HealthReport(False, {"metrics": "RuntimeError: broken"})

    demo.fail = False
    endpoint.render(openmetrics=True)

    assert endpoint.health(False, {"broker": "down"}) == HealthReport(
        False, {"broker": "down", "metrics": "ok"}
    )
    assert demo.scrapes == 2
