"""Redis queues at scrape time: lengths, the age of the oldest message waiting, and the
messages workers hold without having acknowledged them.

What kombu keeps in Redis (checked against kombu 5.3 to 5.7), every key under its
``global_keyprefix``:

- a queue is one list per priority step (``name``, ``name\\x06\\x163``, ...). kombu
  publishes with ``LPUSH`` and consumes with ``BRPOP``, so each list's oldest message, the
  next one out, is at index -1;
- a message delivered with acknowledgements on is kept until acknowledged in the hash
  ``unacked_key`` (delivery tag -> JSON ``[message, exchange, routing_key]``) and in the
  sorted set ``unacked_index_key`` (delivery tag, scored by the Unix time of delivery),
  from which kombu redelivers it once ``visibility_timeout`` has passed. Both are written
  and removed together, in one transaction.

The key names come from the kombu channel, so they always match what kombu writes; the
commands go through a plain client over the channel's connection pool, because which
commands kombu's own client prefixes varies between kombu versions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection

from celery_prom.exporter.queues import ConnectedQueueProbe, QueueSize
from celery_prom.metrics import MAX_UNACKED_READ, OVERFLOW_LABEL_VALUE
from celery_prom.producer import SENT_AT_HEADER
from celery_prom.task_event import InvalidEvent, optional_number


@dataclass
class Unacked:
    """Unacknowledged messages counted under one label value."""

    count: int = 0
    #: Unix time the oldest of them was delivered.
    oldest: float | None = None

    def add(self, count: int, delivered_at: float) -> None:
        self.count += count
        if self.oldest is None or delivered_at < self.oldest:
            self.oldest = delivered_at

    def oldest_age(self, now: float) -> float:
        return 0.0 if self.oldest is None else max(0.0, now - self.oldest)


class RedisQueueProbe(ConnectedQueueProbe):
    """One pipelined round trip for the length (``LLEN``) and the next message out
    (``LINDEX -1``) of every priority sub-queue of every queue, and for the earliest
    unacknowledged deliveries (``ZRANGE``); a second one, only while some message is
    unacknowledged, for the queues of at most ``MAX_UNACKED_READ`` of them (``HMGET``) and
    the total (``HLEN``).
    """

    def __init__(
        self,
        url: str,
        transport_options: Mapping[str, Any],
        timeout: float,
        *,
        ssl: Mapping[str, Any] | bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self._url = url
        self._options = {
            **transport_options,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry_on_timeout": False,
        }
        self._ssl = ssl
        self._clock = clock

    def _sizes(self, names: Sequence[str]) -> list[QueueSize]:
        channel = self._open_channel()
        client = redis.Redis(connection_pool=channel.pool)
        prefix = channel.global_keyprefix
        sub_queues = [
            [prefix + channel._q_for_pri(name, step) for step in channel.priority_steps]
            for name in names
        ]
        pipe = client.pipeline(transaction=False)
        for keys in sub_queues:
            for key in keys:
                pipe.llen(key)
                pipe.lindex(key, -1)
        # One past the bound: the first delivery the exporter will not read.
        pipe.zrange(prefix + channel.unacked_index_key, 0, MAX_UNACKED_READ, withscores=True)
        *replies, oldest_unacked = pipe.execute()
        now = self._clock()
        unacked = read_unacked(client, prefix + channel.unacked_key, oldest_unacked, set(names))
        heads = iter(replies)
        sizes = [
            _queue_size(
                name,
                [(int(next(heads)), next(heads)) for _ in keys],
                unacked.pop(name, Unacked()),
                now,
            )
            for name, keys in zip(names, sub_queues, strict=True)
        ]
        if OVERFLOW_LABEL_VALUE in unacked:  # not a queue: only its unacknowledged messages
            other = unacked[OVERFLOW_LABEL_VALUE]
            sizes.append(
                QueueSize(
                    OVERFLOW_LABEL_VALUE,
                    None,
                    None,
                    unacked=other.count,
                    unacked_oldest=other.oldest_age(now),
                )
            )
        return sizes

    def _open_channel(self) -> Any:
        if self._channel is None:
            self._connection = Connection(self._url, ssl=self._ssl, transport_options=self._options)
            self._channel = self._connection.channel()
        return self._channel


def _queue_size(
    name: str, sub_queues: list[tuple[int, bytes | None]], unacked: Unacked, now: float
) -> QueueSize:
    """A queue from each priority sub-queue's length and oldest message."""
    return QueueSize(
        name,
        sum(length for length, _ in sub_queues),
        None,
        unacked=unacked.count,
        latency=latency(now, (head for _, head in sub_queues)),
        unacked_oldest=unacked.oldest_age(now),
    )


def latency(now: float, heads: Iterable[bytes | None]) -> float | None:
    """Seconds since the oldest of a queue's next messages (one per priority sub-queue, None
    for an empty one) was published: 0 when all are empty, None when one of them carries no
    publish time, since that one may be the oldest."""
    published = [publish_time(head) for head in heads if head is not None]
    if not published:
        return 0.0
    known = [sent_at for sent_at in published if sent_at is not None]
    if len(known) < len(published):
        return None
    return max(0.0, now - min(known))


def publish_time(message: bytes) -> float | None:
    """The publish time ``install(app)`` stamped in a queued message's headers; None when it
    has none or is no kombu message. Only the envelope is parsed, never the body."""
    try:
        envelope = json.loads(message)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, absurd nesting
        return None
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    if not isinstance(headers, dict):
        return None
    try:
        return optional_number(headers.get(SENT_AT_HEADER))
    except InvalidEvent:  # not a finite number
        return None


def read_unacked(
    client: redis.Redis,
    hash_key: str,
    oldest: Sequence[tuple[bytes, float]],
    known: set[str],
) -> dict[str, Unacked]:
    """The unacknowledged messages by queue, from the ``(tag, delivered at)`` pairs of the
    oldest deliveries (up to one past ``MAX_UNACKED_READ``).

    The ``MAX_UNACKED_READ`` oldest are looked up and counted under their routing key when
    it is one of the ``known`` queues, else under ``OVERFLOW_LABEL_VALUE``; when there are
    more, the rest of the hash counts there too, delivered no earlier than the first one
    past the bound.
    """
    if not oldest:  # kombu adds to the hash and the index together: no unacked message
        return {}
    read = oldest[:MAX_UNACKED_READ]
    # The entries and the total at one instant, so that each message counts exactly once.
    pipe = client.pipeline(transaction=True)
    pipe.hmget(hash_key, [tag for tag, _ in read])
    pipe.hlen(hash_key)
    entries, total = pipe.execute()
    by_queue: dict[str, Unacked] = {}
    found = 0
    for (_, delivered_at), entry in zip(read, entries, strict=True):
        if entry is None:  # acknowledged in between
            continue
        found += 1
        queue = routing_key(entry)
        label = queue if queue in known else OVERFLOW_LABEL_VALUE
        by_queue.setdefault(label, Unacked()).add(1, delivered_at)
    past_the_bound = int(total) - found
    if len(oldest) > MAX_UNACKED_READ and past_the_bound > 0:
        by_queue.setdefault(OVERFLOW_LABEL_VALUE, Unacked()).add(
            past_the_bound, oldest[MAX_UNACKED_READ][1]
        )
    return by_queue


def routing_key(entry: bytes) -> str | None:
    """The routing key of an entry of kombu's unacked hash, ``[message, exchange,
    routing_key]``, as the message was published with it; None if it is not one."""
    try:
        value = json.loads(entry)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and len(value) == 3 and isinstance(value[2], str):
        return value[2]
    return None
