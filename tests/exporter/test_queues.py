"""Queue lengths from real brokers, and a scrape that never hangs on a frozen one."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from prometheus_client import CollectorRegistry

from celery_prom.exporter.broker import BoundedCall, BrokerStatus, BrokerTimeout
from celery_prom.exporter.queues import (
    AmqpQueueProbe,
    QueueCollector,
    QueueDiscovery,
    QueueNames,
    QueueSize,
    RedisQueueProbe,
    active_queues_by_worker,
)
from tests.exporter_process import assert_down_while_frozen, running_exporter
from tests.support import (
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    Broker,
    load_test_app,
    private_redis,
    unique,
)


@pytest.mark.parametrize("steps", [None, list(range(10))], ids=["default-steps", "ten-steps"])
def test_redis_counts_every_priority_sub_queue_under_the_key_prefix(
    redis_broker: Broker, steps: list[int] | None
) -> None:
    options = dict(redis_broker.transport_options)
    if steps is not None:
        options["priority_steps"] = steps
    queue = unique("prio")
    app = load_test_app(Broker(redis_broker.url, options), queue)
    for priority in range(10):
        app.send_task("demo.prioritised", priority=priority, queue=queue)
    for _ in range(3):
        app.send_task("demo.plain", queue=queue)
    # The messages really are spread over several lists, all under the key prefix.
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    prefix = options["global_keyprefix"]
    assert len(client.keys(f"{prefix}{queue}*")) == (4 if steps is None else 10)

    probe = RedisQueueProbe(redis_broker.url, options, timeout=5)
    assert probe.sizes([queue, "absent-queue"]) == [
        QueueSize(queue, 13, None),
        QueueSize("absent-queue", 0, None),
    ]
    assert probe.sizes([]) == []


def test_a_probe_answers_again_once_a_restarted_broker_is_back(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        probe = RedisQueueProbe(server.url, {}, timeout=2)
        server.client().rpush("work", b"a", b"b")
        assert probe.sizes(["work"]) == [QueueSize("work", 2, None)]

        server.stop()
        with pytest.raises(redis.ConnectionError):
            probe.sizes(["work"])

        server.start()
        server.client().rpush("work", b"c")
        assert probe.sizes(["work"]) == [QueueSize("work", 1, None)]


@pytest.mark.slow
def test_rabbitmq_reports_ready_messages_and_consumers_past_a_missing_queue(
    amqp_broker: Broker,
) -> None:
    exchange = Exchange(unique("ex"), type="direct")
    busy, idle, missing = unique("busy"), unique("idle"), unique("missing")
    # Publisher confirms: each publish returns once RabbitMQ holds the message in its queue,
    # so the probe's connection cannot count a queue before the messages reach it.
    with Connection(amqp_broker.url, transport_options={"confirm_publish": True}) as connection:
        channel = connection.channel()
        producer = Producer(channel, exchange=exchange)
        queues = [Queue(name, exchange, routing_key=name) for name in (busy, idle)]
        for queue in queues:
            queue(channel).declare()
        for _ in range(3):
            producer.publish({"n": 1}, routing_key=busy)
        producer.publish({"n": 1}, routing_key=idle)
        producer.publish({"n": 2}, routing_key=idle)
        # One consumer holding one unacknowledged message of ``idle``.
        consumer_channel = connection.channel()
        consumer_channel.basic_qos(0, 1, False)
        held = []
        consumer = Consumer(consumer_channel, [queues[1]], callbacks=[lambda b, m: held.append(m)])
        consumer.consume()
        connection.drain_events(timeout=5)
        probe = AmqpQueueProbe(amqp_broker.url, {}, timeout=5, exchange=exchange.name)
        expected = [QueueSize(busy, 3, 0), QueueSize(missing, 0, 0), QueueSize(idle, 1, 1)]
        assert probe.sizes([busy, missing, idle]) == expected
        assert probe.sizes([missing, missing, busy]) == [
            QueueSize(missing, 0, 0),
            QueueSize(missing, 0, 0),
            QueueSize(busy, 3, 0),
        ]
        consumer.cancel()
        for queue in queues:
            queue(channel).delete()
        exchange(channel).delete()


class BlockingProbe:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def sizes(self, names: Sequence[str]) -> list[QueueSize]:
        self.calls += 1
        self.release.wait(30)
        return [QueueSize(name, 1, None) for name in names]


class FailingProbe:
    def sizes(self, names: Sequence[str]) -> list[QueueSize]:
        raise ConnectionRefusedError("connecting to redis://:hunter2@db:6379/0 failed")


@pytest.fixture
def blocking_probe() -> Iterator[BlockingProbe]:
    probe = BlockingProbe()
    yield probe
    probe.release.set()


def test_a_query_that_does_not_return_fails_the_collector_and_is_not_repeated(
    blocking_probe: BlockingProbe,
) -> None:
    status = BrokerStatus()
    status.receiver_connected(reconnect=False)
    collector = QueueCollector(
        QueueNames(["a"], 10), blocking_probe, status, BoundedCall(0.05, "test-query")
    )
    for _ in range(3):
        with pytest.raises(BrokerTimeout):
            list(collector.collect())
    assert blocking_probe.calls == 1  # later scrapes waited on the same stuck query
    assert not status.up
    blocking_probe.release.set()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    assert registry.get_sample_value("celery_queue_length", {"queue_name": "a"}) == 1
    assert status.up


def test_a_failing_query_marks_the_broker_down_with_a_masked_error() -> None:
    status = BrokerStatus()
    status.receiver_connected(reconnect=False)
    collector = QueueCollector(
        QueueNames(["a"], 10), FailingProbe(), status, BoundedCall(5, "test-query")
    )
    with pytest.raises(ConnectionRefusedError):
        list(collector.collect())
    assert not status.up
    assert status.error == "ConnectionRefusedError: connecting to redis://:**@db:6379/0 failed"


def test_queue_names_are_capped_and_sorted() -> None:
    names = QueueNames(["b", "a"], cap=3)
    names.add(["c", "d", "a"])
    assert names.names() == ("a", "b", "c")


def test_active_queues_replies_are_read_defensively() -> None:
    replies = {
        "w1@h": [{"name": "one"}, {"name": "two"}, {"name": "one"}],
        "w2@h": [{"name": ""}, {"nope": 1}, "odd", {"name": "x" * 300}],
        "w3@h": None,
    }
    assert active_queues_by_worker(replies) == {"w1@h": ("one", "two"), "w2@h": ()}
    assert active_queues_by_worker(None) == {}


class RepliesApp:
    """Just enough of a Celery app for queue discovery: canned ``active_queues`` replies."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.control = SimpleNamespace(inspect=self.inspect, mailbox=SimpleNamespace())

    def inspect(self, timeout: float) -> Any:
        return SimpleNamespace(active_queues=lambda: self.replies)

    def connection_for_read(self) -> Any:
        return SimpleNamespace(connection_errors=(), channel_errors=())


def test_a_worker_that_never_answers_is_asked_about_once_per_round() -> None:
    discovery = QueueDiscovery(RepliesApp({}), QueueNames([], 10))
    wanted = discovery._wanted  # the discovery thread's wake-up, driven here by hand

    discovery.notice("silent@h")
    assert wanted.is_set()
    wanted.clear()
    discovery.refresh()  # no answer from silent@h
    discovery.notice("silent@h")
    assert not wanted.is_set()
    discovery.notice("new@h")
    assert wanted.is_set()


def test_a_forgotten_worker_loses_its_queues_and_is_asked_again_when_it_returns() -> None:
    app = RepliesApp({"w1@h": [{"name": "q1"}]})
    discovery = QueueDiscovery(app, QueueNames([], 10))
    discovery.refresh()
    assert discovery.queue_of("w1@h") == "q1"

    discovery.forget("w1@h")
    assert discovery.queue_of("w1@h") is None
    discovery._wanted.clear()
    discovery.notice("w1@h")
    assert discovery._wanted.is_set()


@pytest.mark.slow
def test_a_frozen_broker_turns_into_broker_down_not_a_hung_scrape(tmp_path: Path) -> None:
    with (
        private_redis(tmp_path) as server,
        running_exporter(server.url, tmp_path, "-Q", "jobs", "--broker-timeout", "1") as exporter,
    ):
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        assert server.process is not None
        assert_down_while_frozen(exporter, server.process, "jobs", 0)
