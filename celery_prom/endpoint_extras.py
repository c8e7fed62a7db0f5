"""What parts running beside the worker's own steps add to the worker's endpoint.

The worker's server step (``celery_prom.bootsteps``) and the parts that run inside a worker
without being its steps, such as an embedded beat (``celery_prom.beat``, for
``celery worker -B``), meet on the worker object, so neither imports the other.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from celery_prom.faults import Faults

#: Attribute of the worker (``WorkController``) holding its ``EndpointExtras``.
_ATTRIBUTE = "celery_prom_endpoint_extras"


class EndpointExtras:
    """Collectors the worker's endpoint serves besides its own, and the faults it counts."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()

    def add(self, collector: Collector) -> None:
        with self._lock:
            self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            collectors = list(self._collectors)
        for collector in collectors:
            yield from collector.collect()


def offer(worker: Any, extras: EndpointExtras) -> None:
    """Make ``extras`` the worker endpoint's, for parts that start later in the worker."""
    setattr(worker, _ATTRIBUTE, extras)


def offered(worker: Any) -> EndpointExtras | None:
    """The worker endpoint's extras; ``None`` when the worker serves no metrics."""
    extras: EndpointExtras | None = getattr(worker, _ATTRIBUTE, None)
    return extras
