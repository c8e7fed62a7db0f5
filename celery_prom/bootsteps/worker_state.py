"""Worker gauges, read at scrape time from the worker's own state (never stored)."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import celery
from celery.worker import state as worker_state
from celery.worker.request import Request
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from celery_prom import __version__, metrics
from celery_prom.metrics import new_family
from celery_prom.task_event import DEFAULT_QUEUE

# Pool class modules and the name users pass to ``--pool`` for them.
_POOL_NAMES: Mapping[str, str] = {"thread": "threads"}

# Why the worker discarded a message; the values of celery_worker_invalid_messages_total.
INVALID_UNRECOGNIZED = "unrecognized"  # not a task message Celery understands
INVALID_TASK = "invalid"  # a task message with invalid fields (e.g. an unparsable ETA)
INVALID_UNDECODABLE = "undecodable"  # a body its content type cannot decode


def scheduled_requests(timer: Any) -> Collection[Any]:
    """Requests waiting for their ETA/countdown in the worker whose timer is ``timer``.

    Celery 5.7 keeps them in ``celery.worker.state.scheduled_requests``. 5.3 to 5.6 keep them
    only as entries of the worker's timer, read here as their ``celery inspect scheduled``
    reads them (checked against 5.3.0, 5.3.6, 5.4.0, 5.5.3, 5.6.3 and 5.7.0).
    """
    scheduled = getattr(worker_state, "scheduled_requests", None)
    if scheduled is not None:
        return scheduled  # type: ignore[no-any-return]
    requests = []
    # A copy: the timer's thread or event loop adds and removes entries meanwhile.
    for waiting in list(timer.schedule.queue):
        args = waiting.entry.args
        if args and isinstance(args[0], Request):
            requests.append(args[0])
    return requests


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
    """Active, reserved and longest running tasks and info of one worker, fresh each scrape."""

    def __init__(self, worker: Any, hostname: str, invalid_messages: MessageTally) -> None:
        self._worker = worker
        self._hostname = hostname
        self._invalid = invalid_messages

    def collect(self) -> Iterator[Metric]:
        host = (self._hostname,)
        active = len(worker_state.active_requests)
        # Every active request is also reserved until it is ready; ETA tasks are scheduled.
        waiting = max(0, len(worker_state.reserved_requests) - active)
        waiting += len(scheduled_requests(self._worker.timer))
        yield _gauge(metrics.WORKER_TASKS_ACTIVE, host, active)
        yield _gauge(metrics.WORKER_TASKS_RESERVED, host, waiting)
        # A copy first: the consumer adds and removes requests while the scrape reads them.
        running = tuple(worker_state.active_requests)
        yield longest_running(self._hostname, running, time.time())
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


def longest_running(hostname: str, requests: Iterable[Any], now: float) -> GaugeMetricFamily:
    """Per task name and queue, the age of the oldest execution among ``requests``.

    ``Request.time_start`` is the wall-clock time the pool accepted the task, None until
    then (checked against Celery 5.3 to 5.7).
    """
    oldest: dict[tuple[str, str, str], float] = {}
    for request in requests:
        started = request.time_start
        if started is None:
            continue
        queue = (request.delivery_info or {}).get("routing_key") or DEFAULT_QUEUE
        key = (str(request.name), hostname, str(queue))
        oldest[key] = min(started, oldest.get(key, started))
    family = new_family(metrics.TASK_LONGEST_RUNNING, GaugeMetricFamily)
    for key, started in sorted(oldest.items()):
        family.add_metric(key, max(0.0, now - started))
    return family


def _gauge(family: metrics.Family, labels: tuple[str, ...], value: float) -> GaugeMetricFamily:
    gauge = new_family(family, GaugeMetricFamily)
    gauge.add_metric(labels, value)
    return gauge
