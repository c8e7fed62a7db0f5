"""The endpoint assembly: the task series and the registry on one page, and its health."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

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


TEXT = "text/plain; version=0.0.4; charset=utf-8"
#: What Prometheus 2 asks for.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def test_the_page_is_the_task_series_then_the_registry(endpoint: MetricsEndpoint) -> None:
    endpoint.store.count(("app.add", "w@h", "celery"), RECEIVED)

    body, content_type = endpoint.render("")

    text = body.decode()
    task = 'celery_task_received_total{name="app.add",hostname="w@h",queue_name="celery"} 1.0\n'
    assert text.index(task) < text.index("\ndemo_value 3.0\n")
    assert content_type == TEXT
    assert endpoint.store.runtime_bounds == (1.0,)


class CountingTask:
    """A collector that, as a task counting its own metric, records a success when read."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        self.endpoint.store.count_success(("app.add", "w@h", "celery"), None)
        yield GaugeMetricFamily("demo_counted", "Read after the task series.", value=1)


def test_the_registry_is_read_after_the_task_series(endpoint: MetricsEndpoint) -> None:
    endpoint.registry.register(CountingTask(endpoint))

    text = endpoint.render("")[0].decode()

    # The success recorded while the registry was read is not on this page, only the next.
    assert "celery_task_succeeded_total{" not in text
    assert "\ndemo_counted 1.0\n" in text
    assert 'name="app.add"' in endpoint.render("")[0].decode()


@pytest.mark.parametrize(
    "accept",
    [
        "*/*",
        "application/openmetrics-text;version=0.0.1",
        "text/plain;version=1.0.0;escaping=allow-utf-8",
        PROMETHEUS_ACCEPT,
    ],
)
def test_prometheus_client_chooses_the_format_of_the_whole_page(
    endpoint: MetricsEndpoint, accept: str
) -> None:
    endpoint.store.count(("app.add", "w@h", "celery"), RECEIVED)

    body, chosen = endpoint.render(accept)

    parse = parse_openmetrics if chosen.startswith("application/openmetrics-text") else parse_text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in parse(body.decode())
        for sample in family.samples
    }
    # What it chooses depends on its version: 0.18 knows neither text 1.0.0 nor escaping.
    assert chosen == choose_encoder(accept)[1]
    labels = (("hostname", "w@h"), ("name", "app.add"), ("queue_name", "celery"))
    assert ("celery_task_received_total", labels, 1.0) in samples
    assert ("demo_value", (), 3.0) in samples


def test_health_adds_the_last_render_to_the_feeds_checks_and_renders_nothing(
    endpoint: MetricsEndpoint, demo: Demo
) -> None:
    assert endpoint.health(True, {"tap": "installed"}) == HealthReport(
        True, {"tap": "installed", "metrics": "ok"}
    )
    demo.fail = True
    with pytest.raises(RuntimeError):
        endpoint.render("")

    assert endpoint.health(True, {}) == HealthReport(False, {"metrics": "RuntimeError: broken"})

    demo.fail = False
    endpoint.render(PROMETHEUS_ACCEPT)

    assert endpoint.health(False, {"broker": "down"}) == HealthReport(
        False, {"broker": "down", "metrics": "ok"}
    )
    assert demo.scrapes == 2
