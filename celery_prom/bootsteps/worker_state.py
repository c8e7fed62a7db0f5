"""Worker gauges, read at scrape time from the worker's own state (never stored)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import celery
from celery.worker import state as worker_state
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from celery_prom import __version__, metrics
from celery_prom.metrics import new_family

# Pool class modules and the name users pass to ``--pool`` for them.
_POOL_NAMES: Mapping[str, str] = {"thread": "threads"}

# Why the worker discarded a message; the values of celery_worker_invalid_messages_total.
INVALID_UNRECOGNIZED = "unrecognized"  # not a task message Celery understands
INVALID_TASK = "invalid"  # a task message with invalid fields (e.g. an unparsable ETA)
INVALID_UNDECODABLE = "undecodable"  # a body its content type cannot decode


def scheduled_requests() -> Any:
    """Requests waiting for their ETA/countdown, where Celery keeps a set of them.

    ``celery.worker.state.scheduled_requests`` exists from Celery 5.7; 5.3 to 5.6 keep such
    requests only in the timer, and count them as reserved once they are due.
    """
    return getattr(worker_state, "scheduled_requests", ())


class MessageTally:
    """Thread-safe counts by reason."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1

    def items(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._counts.items())


class WorkerStateCollector:
    """Active, reserved, pool size and info of one worker, fresh on every scrape."""

    def __init__(self, worker: Any, hostname: str, invalid_messages: MessageTally) -> None:
        self._worker = worker
        self._hostname = hostname
        self._invalid = invalid_messages

    def collect(self) -> Iterator[Metric]:
        host = (self._hostname,)
        active = len(worker_state.active_requests)
        # Every active request is also reserved until it is ready; ETA tasks are scheduled.
        waiting = max(0, len(worker_state.reserved_requests) - active)
        waiting += len(scheduled_requests())
        yield _gauge(metrics.WORKER_TASKS_ACTIVE, host, active)
        yield _gauge(metrics.WORKER_TASKS_RESERVED, host, waiting)
        yield _gauge(metrics.WORKER_POOL_PROCESSES, host, pool_processes(self._worker.pool))
        info = (self._hostname, celery.__version__, pool_name(self._worker.pool), __version__)
        yield _gauge(metrics.WORKER_INFO, info, 1)
        invalid = new_family(metrics.WORKER_INVALID_MESSAGES, CounterMetricFamily)
        for reason, count in self._invalid.items():
            invalid.add_metric((self._hostname, reason), count)
        yield invalid


def pool_name(pool: Any) -> str:
    """``prefork``, ``threads``, ``solo``, ``gevent``, ``eventlet`` or a custom class name."""
    if pool is None:
        return "none"
    module = type(pool).__module__
    if module.startswith("celery.concurrency."):
        short = module.rsplit(".", 1)[1]
        return _POOL_NAMES.get(short, short)
    return type(pool).__name__


def pool_processes(pool: Any) -> int:
    """Pool processes that have not exited, or the pool's capacity for thread-like pools.

    For prefork this reads billiard's own bookkeeping instead of polling the children:
    reaping them from the scrape thread would race with billiard's supervisor.
    """
    if pool is None:
        return 0
    processes = getattr(getattr(pool, "_pool", None), "_pool", None)
    if isinstance(processes, list):
        return sum(1 for process in processes if _has_not_exited(process))
    return int(getattr(pool, "limit", None) or 1)


def _has_not_exited(process: Any) -> bool:
    popen = getattr(process, "_popen", None)
    return popen is not None and getattr(popen, "returncode", None) is None


def _gauge(family: metrics.Family, labels: tuple[str, ...], value: float) -> GaugeMetricFamily:
    gauge = new_family(family, GaugeMetricFamily)
    gauge.add_metric(labels, value)
    return gauge
