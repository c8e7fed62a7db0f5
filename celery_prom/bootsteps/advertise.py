"""The worker's metrics address, sent in its heartbeats for the exporter's ``/sd/workers``.

Celery has no setting for extra heartbeat fields. What it has: ``Heart._send`` (the
``worker-online``, ``worker-heartbeat`` and ``worker-offline`` events) and the
``heartbeat`` control command spread ``celery.worker.state.SOFTWARE_INFO`` into the event,
so a key added to that dict travels in every one of them. Checked on Celery 5.3 to 5.7.
Heartbeats go out whenever the worker has a broker connection, with or without ``-E``,
unless it runs with ``--without-heartbeat``.
"""

from __future__ import annotations

import ipaddress
import socket

from celery.worker import state as worker_state

from celery_prom import faults
from celery_prom.config import ADDRESS_FIELD, WorkerSettings, join_host_port
from celery_prom.faults import Faults


def advertised_address(settings: WorkerSettings, port: int) -> str:
    """Where Prometheus reaches the endpoint serving on ``port``: ``--prom-advertise``,
    else the address it listens on when that is a specific one, else this machine's fully
    qualified name."""
    if settings.advertise is not None:
        return settings.advertise.target(port)
    if _is_specific(settings.host):
        return join_host_port(settings.host, port)
    return join_host_port(socket.getfqdn(), port)


class HeartbeatAddress:
    """Adds the address to the worker's heartbeats from ``start`` to ``stop``."""

    def __init__(self, address: str, faults: Faults) -> None:
        self.address = address
        self._faults = faults

    def start(self) -> None:
        with self._faults.contained(faults.HEARTBEAT):
            worker_state.SOFTWARE_INFO[ADDRESS_FIELD] = self.address

    def stop(self) -> None:
        with self._faults.contained(faults.HEARTBEAT):
            worker_state.SOFTWARE_INFO.pop(ADDRESS_FIELD, None)


def _is_specific(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return True  # a name
