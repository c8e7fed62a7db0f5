"""Fixtures for real brokers: the local Redis (own database and key prefix) and RabbitMQ
(own virtual host), each cleaned up after the run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import celery_prom
from tests.support import (
    AMQP_HOST,
    APPS,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    Broker,
    load_test_app,
    unique,
)

sys.path.insert(0, str(APPS))


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[Broker]:
    prefix = unique("cptest") + ":"
    yield Broker(
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        {"global_keyprefix": prefix},
    )
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def amqp_broker() -> Iterator[Broker]:
    vhost = unique("cptest")
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield Broker(f"amqp://guest:guest@{AMQP_HOST}/{vhost}")
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each test using it runs once per broker."""
    return request.getfixturevalue(f"{request.param}_broker")  # type: ignore[no-any-return]


@pytest.fixture
def client_app_for(tmp_path: Path) -> Any:
    """Factory: a producer app (instrumented by ``install``) for a broker and queue."""

    def build(broker: Broker, queue: str) -> Any:
        app = load_test_app(broker, queue)
        celery_prom.install(app)
        return app

    return build


@pytest.fixture
def own_redis_broker() -> Iterator[Broker]:
    """Like ``redis_broker``, with a key prefix (so an event channel) of this test's own."""
    prefix = unique("cptest") + ":"
    yield Broker(f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}", {"global_keyprefix": prefix})
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def own_amqp_broker() -> Iterator[Broker]:
    """Like ``amqp_broker``, with a virtual host (so an event exchange) of this test's own."""
    vhost = unique("cptest")
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield Broker(f"amqp://guest:guest@{AMQP_HOST}/{vhost}")
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(params=["redis", "amqp"])
def own_broker(request: pytest.FixtureRequest) -> Broker:
    """Each test using it runs once per broker, with events no other test can see."""
    return request.getfixturevalue(f"own_{request.param}_broker")  # type: ignore[no-any-return]
