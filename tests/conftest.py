"""Fixtures for real brokers: the local Redis (own database and key prefix) and RabbitMQ
(own virtual host), each cleaned up after the run, and a local SQS endpoint of the run's own.

Only slow tests use RabbitMQ, so that ``-m "not slow"`` needs Redis alone: collection stops
at a test that asks for an AMQP fixture without the mark, and the AMQP runs of tests that
take either broker carry it.
"""

from __future__ import annotations

import contextlib
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
    SqsServer,
    load_test_app,
    started,
    unique,
)

sys.path.insert(0, str(APPS))

TESTS = Path(__file__).resolve().parent
#: Markers given by path under tests/, which CI's legs select by (.ci/matrix).
MARKED_PATHS = {
    # The code that reaches into Celery: the worker's bootsteps and event tap (exact counts
    # under every pool; retries, revokes, time limits, a SIGKILLed pool child, broker
    # restarts), beat's hooks, install(), the producer hooks, the entry point in Celery's
    # command line, and the exporter's event handling, worker tracking, queue probes and
    # command line.
    "celery_internals": (
        "beat/",
        "bootsteps/",
        "cli/test_entry_point.py",
        "cli/test_main.py",
        "exporter/",
        "test_install.py",
        "test_producer.py",
    ),
    # ruff and mypy, which check the code against the types of the newest dependencies.
    "style": ("test_style.py",),
}


#: Tests under a marked path that the Celery minors' legs leave to the newest Celery's leg:
#: hundreds of pool children recycled under load trip Celery 5.3 to 5.6's own assertion in
#: ``AsynPool.verify_process_alive``, which stops the worker whatever runs inside it.
NEWEST_CELERY_ONLY = ("test_user_metrics_are_exact_after_hundreds_of_recycled_children",)


def pytest_itemcollected(item: pytest.Item) -> None:
    path = item.path.relative_to(TESTS).as_posix()
    for marker, paths in MARKED_PATHS.items():
        if path.startswith(paths) and item.name not in NEWEST_CELERY_ONLY:
            item.add_marker(marker)
    if "sqs_server" in getattr(item, "fixturenames", ()):
        item.add_marker("sqs")


#: The fixtures that need RabbitMQ.
AMQP_FIXTURES = frozenset({"amqp_broker", "own_amqp_broker"})
#: The brokers a test using ``broker`` or ``own_broker`` runs against.
BROKER_KINDS = ["redis", pytest.param("amqp", marks=pytest.mark.slow)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if AMQP_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests that need RabbitMQ must be marked slow: {unmarked}")


@contextlib.contextmanager
def _redis_database() -> Iterator[Broker]:
    """The tests' Redis database under a key prefix of its own, whose keys go afterwards."""
    prefix = unique("cptest") + ":"
    try:
        yield Broker(f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}", {"global_keyprefix": prefix})
    finally:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def _rabbitmq_vhost() -> Iterator[Broker]:
    """A RabbitMQ virtual host of its own, deleted afterwards."""
    vhost = unique("cptest")
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield Broker(f"amqp://guest:guest@{AMQP_HOST}/{vhost}")
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[Broker]:
    with _redis_database() as broker:
        yield broker


@pytest.fixture(scope="session")
def amqp_broker() -> Iterator[Broker]:
    with _rabbitmq_vhost() as broker:
        yield broker


@pytest.fixture(params=BROKER_KINDS)
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
    with _redis_database() as broker:
        yield broker


@pytest.fixture
def own_amqp_broker() -> Iterator[Broker]:
    """Like ``amqp_broker``, with a virtual host (so an event exchange) of this test's own."""
    with _rabbitmq_vhost() as broker:
        yield broker


@pytest.fixture(params=BROKER_KINDS)
def own_broker(request: pytest.FixtureRequest) -> Broker:
    """Each test using it runs once per broker, with events no other test can see."""
    return request.getfixturevalue(f"own_{request.param}_broker")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def sqs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqsServer]:
    """A local SQS endpoint (``moto_server``) for the run; tests name their queues uniquely."""
    with started(SqsServer(tmp_path_factory.mktemp("sqs"))) as server:
        yield server
