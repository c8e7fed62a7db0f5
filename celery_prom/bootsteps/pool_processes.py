"""The worker's pool processes: how many run, how many the pool started, each one's memory."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import signals
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from celery_prom import faults, metrics
from celery_prom.faults import Faults
from celery_prom.metrics import new_family

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class PoolProcesses:
    """Pool size, processes started and resident memory of one worker's pool.

    Celery sends ``worker_before_create_process`` in the main process each time the prefork
    pool starts a child, the first ones included (checked against Celery 5.3 to 5.7); no other
    pool sends it, so the started count and the memory exist for prefork only.
    """

    def __init__(self, worker: Any, hostname: str, faults: Faults) -> None:
        self._worker = worker
        self._hostname = hostname
        self._faults = faults
        self._started = 0
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Count children from now on: before the pool is created, to see the first ones."""
        signals.worker_before_create_process.connect(self._on_create_process, weak=False)

    def disconnect(self) -> None:
        signals.worker_before_create_process.disconnect(self._on_create_process)

    def collect(self) -> Iterator[Metric]:
        host = (self._hostname,)
        pool = self._worker.pool
        size = new_family(metrics.WORKER_POOL_PROCESSES, GaugeMetricFamily)
        size.add_metric(host, pool_processes(pool))
        yield size
        children = _children(pool)
        if children is None:
            return
        started = new_family(metrics.WORKER_POOL_PROCESSES_STARTED, CounterMetricFamily)
        with self._lock:
            started.add_metric(host, self._started)
        yield started
        memory = new_family(metrics.WORKER_POOL_PROCESS_MEMORY, GaugeMetricFamily)
        for process in children:
            resident = resident_bytes(process.pid) if _has_not_exited(process) else None
            if resident is not None:
                memory.add_metric((self._hostname, str(process.index)), resident)
        yield memory

    def _on_create_process(self, **_: Any) -> None:
        with self._faults.contained(faults.SIGNAL), self._lock:
            self._started += 1


def pool_processes(pool: Any) -> int:
    """Pool processes that have not exited, or the pool's capacity for thread-like pools.

    For prefork this reads billiard's own bookkeeping instead of polling the children:
    reaping them from the scrape thread would race with billiard's supervisor.
    """
    if pool is None:
        return 0
    children = _children(pool)
    if children is not None:
        return sum(1 for process in children if _has_not_exited(process))
    return int(getattr(pool, "limit", None) or 1)


def resident_bytes(pid: int) -> int | None:
    """The resident set size of process ``pid`` (Linux ``/proc``); None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:  # exited meanwhile, or no /proc here
        return None
    return int(fields[1]) * _PAGE_SIZE


def _children(pool: Any) -> list[Any] | None:
    """billiard's list of the pool's child processes; None for pools without children."""
    processes = getattr(getattr(pool, "_pool", None), "_pool", None)
    return processes if isinstance(processes, list) else None


def _has_not_exited(process: Any) -> bool:
    popen = getattr(process, "_popen", None)
    return popen is not None and getattr(popen, "returncode", None) is None
