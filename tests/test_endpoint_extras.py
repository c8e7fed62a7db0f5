"""Collectors other parts add to a worker's endpoint, found on the worker object."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from celery_prom.endpoint_extras import EndpointExtras, offer, offered
from celery_prom.faults import Faults


class Constant:
    def __init__(self, name: str, value: float) -> None:
        self._name = name
        self._value = value

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, "a constant", value=self._value)


def test_a_worker_without_metrics_offers_no_extras() -> None:
    assert offered(SimpleNamespace()) is None


def test_collectors_added_after_the_registry_was_built_are_served() -> None:
    worker = SimpleNamespace()
    extras = EndpointExtras(Faults())
    registry = CollectorRegistry()
    registry.register(extras)
    offer(worker, extras)

    found = offered(worker)
    assert found is extras
    found.add(Constant("first", 1))
    found.add(Constant("second", 2))

    assert (registry.get_sample_value("first"), registry.get_sample_value("second")) == (1, 2)
