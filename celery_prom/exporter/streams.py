"""Celery events from the broker: one connection's worth of raw payloads.

Two ways in, one way on. Redis delivers events over PUB/SUB; ``RedisEventStream``
subscribes to the same topic kombu publishes them on and reads the socket in large chunks
into hiredis' reply parser, which is about twice as fast as kombu's generic consumer
(numbers in benchmarks/exporter_events.py and docs/benchmarks.md) and so keeps up where kombu
lags until Redis cuts the connection. Every other transport goes through
``KombuEventStream``: a kombu consumer on an exclusive queue bound to the event exchange.
Both hand what they receive to the router (``router.EventRouter``).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
import redis
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue
from kombu.transport.redis import SentinelTransport

from celery_prom.exporter.broker import close_connection, connection_errors

#: Seconds a read waits before the stream checks whether it should stop.
POLL_INTERVAL = 1.0
#: An idle subscription is pinged after this many seconds, and declared dead when the
#: answer takes longer than that again.
IDLE_PING_AFTER = 10.0
_RECV_SIZE = 1 << 20
_PING = b"*1\r\n$4\r\nPING\r\n"

Payload = Callable[[bytes], None]


class ConnectionLost(ConnectionError):
    """The broker closed the event stream or stopped answering."""


class EventStream(Protocol):
    """One connection's worth of events: connect, pump until it breaks, close."""

    #: Exceptions meaning the broker connection failed (the receiver reconnects).
    errors: tuple[type[BaseException], ...]

    def connect(self) -> None: ...

    def pump(self, stopped: threading.Event) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EventSource:
    """Where events come from: the broker, its transport options, the event exchange, and
    how long a connection attempt may take."""

    url: str
    transport_options: Mapping[str, Any]
    exchange: str
    timeout: float


class RedisEventStream:
    """Reads the event PUB/SUB topic straight off the socket (see the module docstring)."""

    def __init__(self, source: EventSource, on_payload: Payload) -> None:
        self._kombu = Connection(
            source.url,
            transport_options={
                **source.transport_options,
                "socket_timeout": source.timeout,
                "socket_connect_timeout": source.timeout,
                "retry_on_timeout": False,
            },
        )
        self._exchange = source.exchange
        self._on_payload = on_payload
        self._subscriber: Any = None
        self.errors: tuple[type[BaseException], ...] = (
            OSError,
            redis.RedisError,
            hiredis.ProtocolError,
            *self._kombu.connection_errors,
        )

    @staticmethod
    def reads(driver: str, transport: type) -> bool:
        """Plain Redis (``broker.transport_kind``); Sentinel setups go through kombu, which
        follows the master."""
        return driver == "redis" and not issubclass(transport, SentinelTransport)

    def connect(self) -> None:
        channel = self._kombu.channel()
        try:
            topics = [channel.global_keyprefix + topic for topic in self._topics(channel)]
            params = {**channel._connparams(), "protocol": 2}
        finally:
            channel.close()
        pool = redis.ConnectionPool(**params)
        # redis-py's connection methods are unannotated.
        subscriber: Any = pool.make_connection()
        subscriber.connect()
        subscriber.send_command("PSUBSCRIBE", *topics)
        self._subscriber = subscriber

    def _topics(self, channel: Any) -> list[str]:
        # kombu >= 5.7 may publish to a second, legacy topic; older kombu has only one.
        several = getattr(channel, "_get_publish_topics", None)
        if several is not None:
            return list(several(self._exchange, "*"))
        return [channel._get_publish_topic(self._exchange, "*")]

    def pump(self, stopped: threading.Event) -> None:
        assert self._subscriber is not None
        sock = self._subscriber._sock
        if sock is None:
            raise ConnectionLost("the subscription has no socket")
        sock.settimeout(POLL_INTERVAL)
        reader = hiredis.Reader()
        on_payload = self._on_payload
        # One reused buffer: a fresh megabyte per read costs an mmap and munmap each time.
        buffer = bytearray(_RECV_SIZE)
        last_read = time.monotonic()
        ping_sent: float | None = None
        while not stopped.is_set():
            try:
                size = sock.recv_into(buffer)
            except TimeoutError:
                ping_sent = self._keep_alive(sock, last_read, ping_sent)
                continue
            if not size:
                raise ConnectionLost("the broker closed the event subscription")
            last_read = time.monotonic()
            ping_sent = None
            reader.feed(buffer, 0, size)  # type: ignore[arg-type]  # any buffer works
            reply = reader.gets()
            while reply is not False:
                if type(reply) is list and len(reply) == 4 and reply[0] == b"pmessage":
                    on_payload(reply[3])
                elif isinstance(reply, Exception):
                    raise ConnectionLost(f"the broker refused the subscription: {reply}")
                reply = reader.gets()

    def close(self) -> None:
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.disconnect()
        close_connection(self._kombu)

    @staticmethod
    def _keep_alive(sock: socket.socket, last_read: float, ping_sent: float | None) -> float | None:
        now = time.monotonic()
        if ping_sent is not None:
            if now - ping_sent > IDLE_PING_AFTER:
                raise ConnectionLost("the broker stopped answering")
            return ping_sent
        if now - last_read > IDLE_PING_AFTER:
            sock.sendall(_PING)
            return now
        return None


class KombuEventStream:
    """A kombu consumer on an exclusive, auto-deleted queue bound to the event exchange."""

    def __init__(self, source: EventSource, on_body: Callable[[object, object], None]) -> None:
        self._connection = Connection(
            source.url,
            connect_timeout=source.timeout,
            heartbeat=IDLE_PING_AFTER * 2,
            transport_options=dict(source.transport_options),
        )
        self._exchange_name = source.exchange
        self._on_body = on_body
        self._consumer: Consumer | None = None
        self.errors = connection_errors(self._connection)

    def connect(self) -> None:
        self._connection.connect()
        exchange = get_exchange(self._connection, name=self._exchange_name)
        queue = Queue(
            f"{self._exchange_name}.celery-prom.{uuid.uuid4().hex}",
            exchange,
            routing_key="#",
            durable=False,
            auto_delete=True,
            exclusive=True,
        )
        self._consumer = Consumer(
            self._connection.channel(),
            [queue],
            on_message=self._on_message,
            no_ack=True,
            accept=[],
        )
        self._consumer.consume()

    def pump(self, stopped: threading.Event) -> None:
        connection = self._connection
        while not stopped.is_set():
            try:
                connection.drain_events(timeout=POLL_INTERVAL)
            except TimeoutError:
                connection.heartbeat_check()

    def close(self) -> None:
        self._consumer = None
        close_connection(self._connection)

    def _on_message(self, message: Any) -> None:
        self._on_body(message.body, message.content_type)
