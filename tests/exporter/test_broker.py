"""Broker status for /metrics and /health, and bounded broker calls."""

from __future__ import annotations

import gc
import os
import threading

import pytest
from kombu import Connection
from kombu.transport.redis import SentinelTransport
from prometheus_client import CollectorRegistry

from celery_prom.exporter.broker import (
    BoundedCall,
    BrokerStatus,
    BrokerTimeout,
    close_connection,
    transport_kind,
)
from tests.support import REDIS_DB, REDIS_HOST, REDIS_PORT, free_port


def sample(status: BrokerStatus, name: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(status)
    return registry.get_sample_value(name)


def test_the_broker_is_up_only_while_receiving_and_the_last_query_worked() -> None:
    status = BrokerStatus()
    assert (status.up, status.error) == (False, "not connected yet")
    status.receiver_connected(reconnect=False)
    assert (status.up, status.error) == (True, None)
    status.query_failed("TimeoutError: slow")
    assert (status.up, status.error) == (False, "TimeoutError: slow")
    status.query_succeeded()
    status.receiver_lost("ConnectionError: gone")
    assert (status.up, status.error) == (False, "ConnectionError: gone")
    assert sample(status, "celery_prom_broker_up") == 0
    status.receiver_connected(reconnect=True)
    assert sample(status, "celery_prom_broker_up") == 1
    assert sample(status, "celery_prom_broker_reconnects_total") == 1


def test_while_the_receiver_cannot_connect_its_error_is_the_one_reported() -> None:
    status = BrokerStatus()
    status.receiver_lost("AuthenticationError: invalid username-password pair")
    status.query_failed("BrokerTimeout: the broker did not answer within 2s")
    assert status.error == "AuthenticationError: invalid username-password pair"
    status.receiver_connected(reconnect=True)
    assert status.error == "BrokerTimeout: the broker did not answer within 2s"
    status.query_succeeded()
    assert status.error is None


def test_a_bounded_call_returns_values_and_raises_errors_of_the_work() -> None:
    call: BoundedCall[int] = BoundedCall(5, "test")
    assert call(lambda: 41 + 1) == 42
    with pytest.raises(ZeroDivisionError):
        call(lambda: 1 // 0)


def test_a_bounded_call_gives_up_waiting_but_never_runs_two_queries() -> None:
    release = threading.Event()
    started: list[int] = []

    def stuck() -> int:
        started.append(1)
        release.wait(30)
        return 7

    call: BoundedCall[int] = BoundedCall(0.05, "test")
    with pytest.raises(BrokerTimeout, match=r"did not answer within 0\.05s"):
        call(stuck)
    with pytest.raises(BrokerTimeout):
        call(stuck)
    assert started == [1]
    release.set()
    call.timeout = 5
    assert call(stuck) in (7,)


def open_pollers() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "eventpoll" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, gone by now
            continue
    return count


@pytest.mark.parametrize("reachable", [True, False], ids=["connected", "refused"])
def test_closing_a_connection_closes_its_poller_at_once(reachable: bool) -> None:
    port = REDIS_PORT if reachable else free_port()
    # Earlier tests' pollers that only the garbage collector closes go now, not mid-count.
    gc.collect()
    before = open_pollers()
    for _ in range(5):
        connection = Connection(f"redis://{REDIS_HOST}:{port}/{REDIS_DB}", connect_timeout=1)
        try:
            connection.channel().close()
        except connection.connection_errors:
            assert not reachable
        close_connection(connection)

    assert open_pollers() == before


def test_transport_kind_names_the_driver_and_class_without_connecting() -> None:
    before = open_pollers()

    assert transport_kind("redis://h:1/0").driver == "redis"
    assert issubclass(transport_kind("sentinel://h:1/0").cls, SentinelTransport)
    assert transport_kind("amqp://guest:guest@h:1//").driver == "amqp"
    assert open_pollers() == before


@pytest.mark.parametrize(
    ("url", "broadcasts"),
    [
        ("redis://h:1/0", True),
        ("sentinel://h:1/0", True),
        ("amqp://guest:guest@h:1//", True),
        ("filesystem://", True),
        ("sqs://key:secret@h:1", False),
    ],
)
def test_transport_kind_says_whether_workers_can_broadcast_to_the_exporter(
    url: str, broadcasts: bool
) -> None:
    assert transport_kind(url).broadcasts is broadcasts


def test_without_events_the_broker_is_up_while_its_queries_work() -> None:
    status = BrokerStatus(events=False)
    assert (status.up, status.error) == (True, None)
    status.query_failed("EndpointConnectionError: refused")
    assert (status.up, status.error) == (False, "EndpointConnectionError: refused")
    status.query_succeeded()
    assert (status.up, status.error) == (True, None)
