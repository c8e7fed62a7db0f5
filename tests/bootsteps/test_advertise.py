"""The address a worker advertises in its heartbeats: which one, and adding it to Celery's
heartbeat fields without ever failing the worker. A real worker's heartbeats reaching the
exporter's /sd/workers: tests/exporter/test_targets.py and tests/monitoring/test_discovery.py.
"""

from __future__ import annotations

import socket
from types import MappingProxyType

import pytest
from celery.worker import state as worker_state

from celery_prom.bootsteps.advertise import HeartbeatAddress, advertised_address
from celery_prom.config import HostPort, WorkerSettings
from celery_prom.faults import Faults


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (WorkerSettings(advertise=HostPort("w1.internal")), "w1.internal:9811"),
        (WorkerSettings(advertise=HostPort("w1.internal", 80)), "w1.internal:80"),
        (WorkerSettings(host="::", advertise=HostPort("fd00::7")), "[fd00::7]:9811"),
        (WorkerSettings(host="10.0.0.7"), "10.0.0.7:9811"),
        (WorkerSettings(host="::1"), "[::1]:9811"),
        (WorkerSettings(host="w1.internal"), "w1.internal:9811"),
        (WorkerSettings(host="0.0.0.0"), f"{socket.getfqdn()}:9811"),
        (WorkerSettings(host="::"), f"{socket.getfqdn()}:9811"),
    ],
)
def test_the_advertised_address(settings: WorkerSettings, expected: str) -> None:
    assert advertised_address(settings, 9811) == expected


def test_the_address_is_a_heartbeat_field_from_start_to_stop() -> None:
    faults = Faults()
    address = HeartbeatAddress("10.0.0.7:9808", faults)

    address.start()
    try:
        assert worker_state.SOFTWARE_INFO["celery_prom_address"] == "10.0.0.7:9808"
    finally:
        address.stop()

    assert "celery_prom_address" not in worker_state.SOFTWARE_INFO
    assert faults.reasons() == {}


def test_a_celery_that_refuses_the_field_is_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_state, "SOFTWARE_INFO", MappingProxyType({}))
    faults = Faults()
    address = HeartbeatAddress("10.0.0.7:9808", faults)

    address.start()
    assert faults.reasons() == {
        "heartbeat": "TypeError: 'mappingproxy' object does not support item assignment"
    }
    address.stop()
    assert faults.reasons() == {
        "heartbeat": "AttributeError: 'mappingproxy' object has no attribute 'pop'"
    }
