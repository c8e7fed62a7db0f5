"""Worker liveness from heartbeats: which workers are up, and forgetting those long gone.

Workers send ``worker-online``, ``worker-heartbeat`` (every 2 s by default) and
``worker-offline`` events whenever they have a broker connection, with or without ``-E``.
Liveness is judged by when the exporter *received* the last heartbeat, so clock skew
between hosts does not matter.

Each worker's events may carry the address its metrics are served at (the worker step adds
it); ``targets`` lists those of the workers still running, for ``/sd/workers``.

A worker silent for longer than the purge delay is forgotten: its gauges and its task
series disappear. A late event of such a worker (delayed in the broker, or replayed) must
not bring it back, so a purged worker leaves a tombstone holding the last timestamp it
sent (its own clock). Only a heartbeat sent well after that, by more than the worker
timeout, proves the worker is alive again; anything else from it is dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import click
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from celery_prom import metrics
from celery_prom.config import ADDRESS_FIELD, Address
from celery_prom.exporter.dropped import DROP_OFFLINE_WORKER, DROP_TOO_MANY_WORKERS
from celery_prom.metrics import new_family
from celery_prom.task_event import (
    DROP_INVALID_FIELD,
    DROP_MALFORMED,
    InvalidEvent,
    label,
    optional_number,
)

#: Purged workers remembered, so that their late events stay dropped.
MAX_TOMBSTONES = 10_000

WORKER_EVENTS = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})


class Clock:
    """Wall time (for the exported timestamp) and monotonic time (for durations)."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(slots=True)
class _Worker:
    received_at: float  # wall time of the last heartbeat or online event
    received_mono: float
    sent_at: float | None  # the worker's own timestamp of its latest event
    online: bool
    active: int | None = None
    processed: int | None = None
    address: str | None = None  # host:port of its metrics endpoint, if it sent one


@dataclass(frozen=True, slots=True)
class _Reported:
    """What a worker event says about the worker, beyond when it was sent."""

    active: int | None
    processed: int | None
    address: str | None


class WorkerLiveness:
    """Heartbeat bookkeeping per hostname; thread-safe.

    At most ``max_workers`` are tracked: events of further hostnames are dropped until some
    are purged. Purging is the owner's to schedule (scrapes only read).
    """

    def __init__(
        self,
        worker_timeout: float,
        purge_offline_after: float,
        clock: Clock | None = None,
        max_workers: int = 2000,
    ) -> None:
        self.worker_timeout = worker_timeout
        self.purge_offline_after = purge_offline_after
        self.max_workers = max_workers
        self._clock = clock or Clock()
        self._workers: dict[str, _Worker] = {}
        self._tombstones: OrderedDict[str, float] = OrderedDict()
        self._purge_held = False
        self._purge_resumes_at = 0.0
        self._lock = threading.Lock()

    # -- events ----------------------------------------------------------------------------

    def observe(self, event: Mapping[str, Any]) -> str | None:
        """Apply one worker event; returns the drop reason when it cannot be used."""
        hostname = event.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return DROP_MALFORMED
        try:
            label(hostname)
            sent_at = optional_number(event.get("timestamp"))
            reported = _Reported(
                active=_optional_count(event, "active"),
                processed=_optional_count(event, "processed"),
                address=_address(event),
            )
        except InvalidEvent as invalid:
            return invalid.reason
        event_type = event.get("type")
        with self._lock:
            if hostname in self._tombstones and not self._revives(hostname, event_type, sent_at):
                return DROP_OFFLINE_WORKER
            if hostname not in self._workers and len(self._workers) >= self.max_workers:
                return DROP_TOO_MANY_WORKERS
            self._tombstones.pop(hostname, None)
            self._apply(hostname, event_type, sent_at, reported)
        return None

    def accepts(self, hostname: object) -> bool:
        """False for a task event of a purged worker: only a heartbeat can revive it."""
        if not self._tombstones or not isinstance(hostname, str):
            return True
        with self._lock:
            return hostname not in self._tombstones

    # -- purging ---------------------------------------------------------------------------

    def hold_purge(self) -> None:
        """Stop purging: while the exporter is disconnected, silence proves nothing."""
        with self._lock:
            self._purge_held = True

    def resume_purge(self) -> None:
        """Purge again once workers have had a worker timeout to send a heartbeat."""
        with self._lock:
            self._purge_held = False
            self._purge_resumes_at = self._clock.monotonic() + self.worker_timeout

    def purge_offline(self) -> list[str]:
        """Forget the workers silent for longer than the purge delay; returns them."""
        now = self._clock.monotonic()
        with self._lock:
            if self._purge_held or now < self._purge_resumes_at:
                return []
            doomed = [
                hostname
                for hostname, worker in self._workers.items()
                if now - worker.received_mono > self.purge_offline_after
            ]
            for hostname in doomed:
                worker = self._workers.pop(hostname)
                self._bury(hostname, worker.sent_at)
        return doomed

    # -- discovery -------------------------------------------------------------------------

    def targets(self) -> list[tuple[str, str]]:
        """(hostname, address) of every worker that sent an address and has not said
        goodbye (``worker-offline``), sorted.

        A worker that went silent without one stays until it is purged, so that Prometheus
        goes on trying to scrape it and its ``up`` of 0 can alert.
        """
        with self._lock:
            return sorted(
                (hostname, worker.address)
                for hostname, worker in self._workers.items()
                if worker.online and worker.address is not None
            )

    # -- scrape ----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        now = self._clock.monotonic()
        with self._lock:
            workers = sorted(self._workers.items())
        up = new_family(metrics.WORKER_UP, GaugeMetricFamily)
        last = new_family(metrics.WORKER_LAST_HEARTBEAT, GaugeMetricFamily)
        active = new_family(metrics.WORKER_TASKS_ACTIVE, GaugeMetricFamily)
        processed = new_family(metrics.WORKER_PROCESSED, CounterMetricFamily)
        for hostname, worker in workers:
            alive = worker.online and now - worker.received_mono <= self.worker_timeout
            up.add_metric((hostname,), 1 if alive else 0)
            last.add_metric((hostname,), worker.received_at)
            if alive and worker.active is not None:
                active.add_metric((hostname,), worker.active)
            if worker.processed is not None:
                processed.add_metric((hostname,), worker.processed)
        yield up
        yield last
        yield active
        yield processed

    # -- internals -------------------------------------------------------------------------

    def _revives(self, hostname: str, event_type: object, sent_at: float | None) -> bool:
        if event_type not in ("worker-online", "worker-heartbeat") or sent_at is None:
            return False
        return sent_at > self._tombstones[hostname] + self.worker_timeout

    def _apply(
        self,
        hostname: str,
        event_type: object,
        sent_at: float | None,
        reported: _Reported,
    ) -> None:
        worker = self._workers.get(hostname)
        if worker is None:
            if event_type == "worker-offline":
                return  # nothing to report about a worker never seen alive
            worker = self._workers[hostname] = _Worker(0.0, 0.0, None, True)
        if sent_at is not None and (worker.sent_at is None or sent_at > worker.sent_at):
            worker.sent_at = sent_at
        if event_type == "worker-offline":
            worker.online = False
            return
        worker.online = True
        worker.received_at = self._clock.wall()
        worker.received_mono = self._clock.monotonic()
        if reported.active is not None:
            worker.active = reported.active
        if reported.processed is not None:
            worker.processed = reported.processed
        worker.address = reported.address

    def _bury(self, hostname: str, sent_at: float | None) -> None:
        # Without a timestamp of its own, any later heartbeat of the worker revives it.
        self._tombstones[hostname] = -math.inf if sent_at is None else sent_at
        self._tombstones.move_to_end(hostname)
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)


def _address(event: Mapping[str, Any]) -> str | None:
    """The worker's metrics address, when it sent a usable one: without it the worker is
    still alive, only not listed for discovery."""
    value = event.get(ADDRESS_FIELD)
    if not isinstance(value, str) or len(value) > metrics.MAX_LABEL_VALUE_LENGTH:
        return None
    try:
        return Address().convert(value, None, None)
    except click.BadParameter:
        return None


def _optional_count(event: Mapping[str, Any], name: str) -> int | None:
    value = event.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(DROP_INVALID_FIELD)
    return value
