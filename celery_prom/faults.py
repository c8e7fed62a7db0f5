"""Errors of celery-prom's own parts inside a worker or beat: contained, counted, logged once.

A metrics plugin must never be the reason a worker stops or loses a task, nor the reason
beat misses one. Every place where celery-prom runs inside the worker (its steps starting,
the tap's recording, signal receivers, scrapes, multiprocess compaction) or beat (its
scheduler hook) reports what it raises here instead of letting it reach Celery;
``celery_prom_errors_total{component}`` and ``/health`` show it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_prom import metrics
from celery_prom.config import mask_secrets
from celery_prom.metrics import new_family

logger = logging.getLogger(__name__)

# The components, as the ``component`` label names them.
STARTUP = "startup"
TAP_INSTALL = "tap_install"
TAP = "tap"
SIGNAL = "signal"
SCRAPE = "scrape"
MULTIPROCESS = "multiprocess"
HEARTBEAT = "heartbeat"
BEAT = "beat"


def describe_error(error: BaseException) -> str:
    """An error on one line, its type and the first line of its message, passwords masked."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return mask_secrets(f"{name}: {text}" if text else name)


class Faults:
    """Errors by component: how many, and the last one's reason."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, component: str, error: BaseException) -> None:
        reason = describe_error(error)
        with self._lock:
            first = component not in self._counts
            self._counts[component] = self._counts.get(component, 0) + 1
            self._reasons[component] = reason
        if first:  # a failure repeated on every task would drown the worker's own log
            logger.error(
                "celery-prom: %s failed (the worker or beat goes on; later errors of this part "
                "are only counted in celery_prom_errors_total): %s",
                component,
                reason,
                exc_info=error,
            )

    @contextlib.contextmanager
    def contained(self, component: str) -> Iterator[None]:
        """Run the block; whatever it raises is recorded under ``component``, not raised."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - containing every error is the point
            self.record(component, error)

    def mirror(self, component: str, count: int, reason: str | None) -> None:
        """Take over the count and last reason of errors another process recorded (and
        logged) for ``component``: an embedded beat's, for the worker it runs in."""
        with self._lock:
            if count > self._counts.get(component, 0):
                self._counts[component] = count
                if reason is not None:
                    self._reasons[component] = reason

    def resolved(self, component: str) -> None:
        """``component`` works again (its count stays: it is a counter)."""
        with self._lock:
            self._reasons.pop(component, None)

    def counts(self) -> dict[str, int]:
        """How many errors each component that failed has had."""
        with self._lock:
            return dict(self._counts)

    def reasons(self) -> dict[str, str]:
        """The last error's reason of each component that failed."""
        with self._lock:
            return dict(self._reasons)

    def collect(self) -> Iterator[Metric]:
        counter = new_family(metrics.PROM_ERRORS, CounterMetricFamily)
        with self._lock:
            counts = sorted(self._counts.items())
        for component, count in counts:
            counter.add_metric((component,), count)
        yield counter


class ContainedCollector:
    """A collector whose errors leave its own families out of a scrape, and nothing else."""

    def __init__(self, collector: Collector, faults: Faults) -> None:
        self._collector = collector
        self._faults = faults

    def collect(self) -> list[Metric]:
        try:
            return list(self._collector.collect())
        except Exception as error:  # noqa: BLE001 - one part failing must not fail the scrape
            self._faults.record(SCRAPE, error)
            return []
