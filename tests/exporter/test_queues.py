"""Queue lengths from RabbitMQ, the queue collector, queue discovery, and a scrape that never
hangs on a frozen broker. (Redis's probe: test_redis_queues.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from prometheus_client import CollectorRegistry

from celery_prom.exporter.broker import BoundedCall, BrokerStatus, BrokerTimeout
from celery_prom.exporter.queues import (
    AmqpQueueProbe,
    QueueCollector,
    QueueDiscovery,
    QueueNames,
    QueueSize,
    active_queues_by_worker,
)
from tests.exporter_process import assert_down_while_frozen, running_exporter
from tests.support import (
    Broker,
    private_redis,
    unique,
)


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


class FixedProbe:
    def __init__(self, sizes: list[QueueSize]) -> None:
        self._sizes = sizes

    def sizes(self, names: Sequence[str]) -> list[QueueSize]:
        return self._sizes


def test_a_value_the_broker_does_not_tell_has_no_series() -> None:
    probe = FixedProbe(
        [
            QueueSize("a", 2, None, unacked=1, latency=None, unacked_oldest=3.5),
            QueueSize("b", 0, 4, latency=0.0),
            QueueSize("_other", None, None, unacked=7, unacked_oldest=9.0),
        ]
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        QueueCollector(QueueNames(["a", "b"], 10), probe, BrokerStatus(), BoundedCall(5, "test"))
    )
    samples = {
        (sample.name, sample.labels["queue_name"]): sample.value
        for family in registry.collect()
        for sample in family.samples
    }
    assert samples == {
        ("celery_queue_length", "a"): 2,
        ("celery_queue_length", "b"): 0,
        ("celery_queue_latency_seconds", "b"): 0,
        ("celery_active_consumer_count", "b"): 4,
        ("celery_queue_unacked_messages", "a"): 1,
        ("celery_queue_unacked_messages", "_other"): 7,
        ("celery_queue_unacked_oldest_seconds", "a"): 3.5,
        ("celery_queue_unacked_oldest_seconds", "_other"): 9,
    }


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
