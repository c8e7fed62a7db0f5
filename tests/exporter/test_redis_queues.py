"""Redis queues from a real Redis: lengths over every priority sub-queue, the age of the
oldest message waiting, and the messages delivered and not yet acknowledged, exact for
known publish and delivery times; in two round trips at most, whatever the number of
unacknowledged messages."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu.transport.redis
import pytest
import redis
from kombu import Connection, Producer

from celery_prom.exporter.queues import QueueSize
from celery_prom.exporter.redis_queues import RedisQueueProbe, publish_time
from celery_prom.metrics import MAX_UNACKED_READ
from celery_prom.producer import SENT_AT_HEADER
from tests.exporter_process import running_exporter_for
from tests.support import (
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    Broker,
    Scrape,
    load_test_app,
    private_redis,
    running_worker,
    unique,
    wait_for,
)

T = "cptest_tasks."
#: The probe's clock in the tests that give publish and delivery times.
NOW = 1_800_000_000.0


def probe_of(broker: Broker, **options: Any) -> RedisQueueProbe:
    return RedisQueueProbe(
        broker.url, {**broker.transport_options, **options}, timeout=5, clock=lambda: NOW
    )


def empty(name: str) -> QueueSize:
    return QueueSize(name, 0, None, unacked=0, latency=0.0, unacked_oldest=0.0)


@pytest.mark.parametrize("steps", [None, list(range(10))], ids=["default-steps", "ten-steps"])
def test_redis_counts_every_priority_sub_queue_under_the_key_prefix(
    redis_broker: Broker, steps: list[int] | None
) -> None:
    options = {} if steps is None else {"priority_steps": steps}
    queue = unique("prio")
    broker = Broker(redis_broker.url, {**redis_broker.transport_options, **options})
    app = load_test_app(broker, queue)
    for priority in range(10):
        app.send_task("demo.prioritised", priority=priority, queue=queue)
    for _ in range(3):
        app.send_task("demo.plain", queue=queue)
    # The messages really are spread over several lists, all under the key prefix.
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    prefix = redis_broker.transport_options["global_keyprefix"]
    assert len(client.keys(f"{prefix}{queue}*")) == (4 if steps is None else 10)

    probe = probe_of(redis_broker, **options)
    sizes = probe.sizes([queue, "absent-queue"])
    assert [(size.name, size.length) for size in sizes] == [(queue, 13), ("absent-queue", 0)]
    assert sizes[1] == empty("absent-queue")
    assert probe.sizes([]) == []


def test_a_probe_answers_again_once_a_restarted_broker_is_back(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        probe = probe_of(server.broker)
        server.client().rpush("work", b"a", b"b")
        assert probe.sizes(["work"])[0].length == 2

        server.stop()
        with pytest.raises(redis.ConnectionError):
            probe.sizes(["work"])

        server.start()
        server.client().rpush("work", b"c")
        assert probe.sizes(["work"])[0].length == 1


@contextlib.contextmanager
def kombu_channel(broker: Broker) -> Iterator[Any]:
    """A channel of kombu's Redis transport; closing it requeues what it did not acknowledge."""
    with Connection(broker.url, transport_options=broker.transport_options) as connection:
        yield connection.channel()


def send(channel: Any, queue: str, sent_at: object = None, priority: int = 0) -> None:
    """A message for ``queue`` whose headers say it was published at ``sent_at`` (none if
    None), as ``install(app)`` stamps them. Published with kombu: the producer hooks another
    test may have connected in this process would stamp a Celery task with the time now."""
    headers = {} if sent_at is None else {SENT_AT_HEADER: sent_at}
    Producer(channel).publish({}, routing_key=queue, headers=headers, priority=priority)


def test_latency_is_the_age_of_the_oldest_next_message_over_the_priority_sub_queues(
    redis_broker: Broker,
) -> None:
    names = ("busy", "idle", "unstamped", "stamped-head", "mixed", "skewed", "garbage")
    busy, idle, unstamped, stamped_head, mixed, skewed, garbage = (unique(n) for n in names)
    with kombu_channel(redis_broker) as channel:
        # In each priority sub-queue the first published is next out; the oldest of those wins.
        send(channel, busy, NOW - 50, priority=0)
        send(channel, busy, NOW - 10, priority=0)
        send(channel, busy, NOW - 100, priority=9)
        send(channel, busy, NOW - 5, priority=9)
        send(channel, busy, NOW - 20, priority=3)
        # Only the next message of each sub-queue is read: an older one further back is not.
        send(channel, busy, NOW - 30, priority=6)
        send(channel, busy, NOW - 500, priority=6)
        send(channel, unstamped)  # next out has no publish time: no latency
        send(channel, unstamped, NOW - 7)
        send(channel, stamped_head, NOW - 7)
        send(channel, stamped_head)
        send(channel, mixed, NOW - 7, priority=0)  # the sub-queue without one may hold the oldest
        send(channel, mixed, priority=9)
        send(channel, skewed, NOW + 30)  # a producer's clock ahead of the exporter's
    client = redis.Redis.from_url(redis_broker.url)
    client.lpush(redis_broker.transport_options["global_keyprefix"] + garbage, b"\xff{not json")

    reported = [busy, idle, unstamped, stamped_head, mixed, skewed, garbage]
    sizes = probe_of(redis_broker).sizes(reported)

    assert [(size.name, size.length, size.latency) for size in sizes] == [
        (busy, 7, 100.0),
        (idle, 0, 0.0),
        (unstamped, 2, None),
        (stamped_head, 2, 7.0),
        (mixed, 2, None),
        (skewed, 1, 0.0),
        (garbage, 1, None),
    ]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (json.dumps({"headers": {SENT_AT_HEADER: 12.5}, "body": "e30="}).encode(), 12.5),
        (json.dumps({"headers": {SENT_AT_HEADER: 12}}).encode(), 12.0),
        (json.dumps({"headers": {}}).encode(), None),
        (json.dumps({"headers": {SENT_AT_HEADER: "12.5"}}).encode(), None),
        (json.dumps({"headers": {SENT_AT_HEADER: True}}).encode(), None),
        (json.dumps({"headers": {SENT_AT_HEADER: float("nan")}}).encode(), None),
        (json.dumps({"headers": [SENT_AT_HEADER]}).encode(), None),
        (json.dumps([1, 2]).encode(), None),
        (b"[" * 100_000, None),
        (b"\xff", None),
    ],
    ids=[
        "float",
        "int",
        "unstamped",
        "text",
        "bool",
        "nan",
        "headers-not-a-dict",
        "not-a-dict",
        "deep",
        "not-utf8",
    ],
)
def test_a_publish_time_is_read_from_the_headers_only(message: bytes, expected: object) -> None:
    assert publish_time(message) == expected


def publish(channel: Any, queue: str, count: int) -> None:
    producer = Producer(channel)  # the default exchange: the routing key is the queue
    for _ in range(count):
        producer.publish({}, routing_key=queue)


def deliver(
    channel: Any, queue: str, count: int, at: float, monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    """``count`` messages of ``queue`` taken as a consumer takes them, unacknowledged, kombu's
    clock saying they were delivered at ``at``."""
    monkeypatch.setattr(kombu.transport.redis, "time", lambda: at)
    messages = [channel.basic_get(queue) for _ in range(count)]
    assert None not in messages
    return messages


def test_unacked_messages_are_counted_by_queue_with_the_age_of_the_oldest(
    own_redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, idle, unknown = (unique(name) for name in ("first", "second", "idle", "unk"))
    probe = probe_of(own_redis_broker)
    with kombu_channel(own_redis_broker) as channel:
        publish(channel, first, 3)
        publish(channel, second, 1)
        publish(channel, unknown, 2)
        deliver(channel, unknown, 1, NOW - 60, monkeypatch)
        deliver(channel, first, 1, NOW - 40, monkeypatch)
        held = deliver(channel, first, 1, NOW - 30, monkeypatch)
        deliver(channel, second, 1, NOW - 20, monkeypatch)
        unknown_held = deliver(channel, unknown, 1, NOW - 10, monkeypatch)

        assert probe.sizes([first, second, idle]) == [
            QueueSize(first, 1, None, unacked=2, latency=None, unacked_oldest=40.0),
            QueueSize(second, 0, None, unacked=1, latency=0.0, unacked_oldest=20.0),
            empty(idle),
            # A queue not reported (nor a label to make for it): counted as the overflow.
            QueueSize("_other", None, None, unacked=2, unacked_oldest=60.0),
        ]

        held[0].ack()
        unknown_held[0].ack()
        sizes = probe.sizes([first, unknown])
        assert [(s.name, s.unacked, s.unacked_oldest) for s in sizes] == [
            (first, 1, 40.0),
            (unknown, 1, 60.0),  # now reported, it is attributed
            ("_other", 1, 20.0),  # second's, which is no longer reported
        ]


def test_past_the_read_bound_unacked_messages_count_as_the_overflow(
    own_redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    many, late, unknown = unique("many"), unique("late"), unique("unknown")
    probe = probe_of(own_redis_broker)
    with kombu_channel(own_redis_broker) as channel:
        publish(channel, many, MAX_UNACKED_READ - 1)
        publish(channel, unknown, 1)
        publish(channel, late, 3)
        deliver(channel, many, MAX_UNACKED_READ - 1, NOW - 100, monkeypatch)
        unknown_held = deliver(channel, unknown, 1, NOW - 90, monkeypatch)
        for age in (50, 40, 30):
            deliver(channel, late, 1, NOW - age, monkeypatch)

        # The MAX_UNACKED_READ delivered first are attributed (the unknown queue's to the
        # overflow); late's three come after them: counted, unread, as the overflow, which is
        # as old as its oldest, the unknown queue's.
        assert probe.sizes([many, late]) == [
            QueueSize(many, 0, None, unacked=MAX_UNACKED_READ - 1, latency=0, unacked_oldest=100),
            QueueSize(late, 0, None, unacked=0, latency=0.0, unacked_oldest=0.0),
            QueueSize("_other", None, None, unacked=4, unacked_oldest=90.0),
        ]

        unknown_held[0].ack()
        # One read slot freed: late's oldest is read and attributed; its two others are
        # past the bound, as old as the first of them.
        sizes = probe.sizes([many, late])
        assert [(s.name, s.unacked, s.unacked_oldest) for s in sizes] == [
            (many, MAX_UNACKED_READ - 1, 100.0),
            (late, 1, 50.0),
            ("_other", 2, 40.0),
        ]


class RoundTrips:
    """Counts the requests redis-py sends (a pipeline is one), in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        send_packed = redis.connection.Connection.send_packed_command

        def counted(connection: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return send_packed(connection, *args, **kwargs)

        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)

    def of(self, call: Any) -> int:
        before = self.count
        call()
        return self.count - before


def test_one_round_trip_for_all_queues_and_one_more_while_messages_are_unacked(
    own_redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [unique("q") for _ in range(50)]
    probe = probe_of(own_redis_broker, priority_steps=list(range(10)))
    trips = RoundTrips(monkeypatch)
    probe.sizes(names)  # connects (its handshake is not the probe's)
    assert trips.of(lambda: probe.sizes(names)) == 1
    with kombu_channel(own_redis_broker) as channel:
        publish(channel, names[0], MAX_UNACKED_READ + 10)
        deliver(channel, names[0], MAX_UNACKED_READ + 10, NOW, monkeypatch)
        assert trips.of(lambda: probe.sizes(names)) == 2


def scrape_between(exporter: Any) -> tuple[float, Scrape, float]:
    """A scrape of the exporter and the times just before and after it."""
    before = time.time()
    scrape = exporter.scrape()
    assert scrape is not None
    return before, scrape, time.time()


@pytest.mark.slow
def test_an_exporter_serves_latency_from_the_publish_times_producers_stamp(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Any
) -> None:
    prioritised, stamped, idle, unstamped = (unique(n) for n in ("prio", "stamped", "idle", "un"))
    started = time.time()
    with kombu_channel(own_redis_broker) as channel:
        send(channel, prioritised, started - 50, priority=0)
        send(channel, prioritised, started - 100, priority=9)
        send(channel, unstamped)
    client_app_for(own_redis_broker, stamped).send_task(f"{T}noop", queue=stamped)
    sent = time.time()
    queues = ",".join((prioritised, stamped, idle, unstamped))
    with running_exporter_for(own_redis_broker, tmp_path, "-Q", queues) as exporter:

        def sized() -> tuple[float, Scrape, float] | None:
            found = scrape_between(exporter)
            return found if found[1].value("celery_queue_length", queue_name=idle) == 0 else None

        before, scrape, after = wait_for(sized, what="the queues sized")
    latency = scrape.by_label("celery_queue_latency_seconds", "queue_name")
    assert set(latency) == {prioritised, stamped, idle}  # unstamped's next has no publish time
    assert 100 <= latency[prioritised] <= after - started + 100
    assert before - sent <= latency[stamped] <= after - started
    assert latency[idle] == 0
    assert scrape.value("celery_queue_length", queue_name=unstamped) == 1


def unacked_and_waiting(scrape: Scrape, queue: str) -> tuple[float | None, ...]:
    return (
        scrape.value("celery_queue_unacked_messages", queue_name=queue),
        scrape.value("celery_queue_length", queue_name=queue),
    )


@pytest.mark.slow
def test_an_exporter_serves_the_messages_a_worker_holds_unacknowledged(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Any
) -> None:
    release = tmp_path / "release"
    with (
        running_worker(
            own_redis_broker, tmp_path, concurrency=1, env={"CPTEST_PREFETCH": "2"}
        ) as worker,
        running_exporter_for(own_redis_broker, tmp_path, "-Q", worker.queue) as exporter,
    ):
        app = client_app_for(own_redis_broker, worker.queue)
        sent = time.time()
        for _ in range(5):
            app.send_task(f"{T}hold_until", args=[str(release)], queue=worker.queue)
        # One running, one prefetched (prefetch 1 process x 2), each acknowledged only once
        # it has run: two unacknowledged, three waiting.
        held = exporter.wait_for_scrape(
            lambda s: unacked_and_waiting(s, worker.queue) == (2, 3), what="2 unacked, 3 waiting"
        )
        seen_held = time.time()
        assert held.series("celery_queue_unacked_messages") == {
            frozenset({("queue_name", worker.queue)}): 2
        }

        def aged() -> tuple[float, Scrape, float] | None:
            found = scrape_between(exporter)
            oldest = found[1].value("celery_queue_unacked_oldest_seconds", queue_name=worker.queue)
            return found if oldest is not None and oldest >= 1 else None

        before, scrape, after = wait_for(aged, what="the oldest unacked a second old")
        assert unacked_and_waiting(scrape, worker.queue) == (2, 3)
        oldest = scrape.value("celery_queue_unacked_oldest_seconds", queue_name=worker.queue)
        assert oldest is not None
        assert before - seen_held <= oldest <= after - sent

        release.touch()
        done = exporter.wait_for_scrape(
            lambda s: unacked_and_waiting(s, worker.queue) == (0, 0), what="all acknowledged"
        )
        assert done.value("celery_queue_unacked_oldest_seconds", queue_name=worker.queue) == 0
        assert done.series("celery_queue_unacked_messages") == {
            frozenset({("queue_name", worker.queue)}): 0
        }
