"""Celery events from the broker: consuming, decoding and routing them.

Two ways in, one way on. Redis delivers events over PUB/SUB; ``RedisEventStream``
subscribes to the same topic kombu publishes them on and reads the socket in large chunks
into hiredis' reply parser, which is about twice as fast as kombu's generic consumer
(numbers in benchmarks/exporter_events.py and docs/benchmarks.md) and so keeps up where kombu
lags until Redis cuts the connection. Every other transport goes through
``KombuEventStream``: a kombu consumer on an exclusive queue bound to the event exchange.

Both hand raw payloads to ``EventRouter``, which decodes JSON only (a pickled payload is
never unpickled), splits ``task.multi`` batches, and routes each event: task events to
the recorder (unless the worker already counted them itself), worker events to the
liveness tracker. Anything unusable is counted as dropped with its reason.
"""

from __future__ import annotations

import binascii
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import hiredis
import redis
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Queue
from kombu.transport.redis import SentinelTransport

from celery_prom.broker import close_connection
from celery_prom.recorder import (
    DROP_MALFORMED,
    DROP_OFFLINE_WORKER,
    DROP_RECORDED_BY_WORKER,
    DROP_UNDECODABLE,
    DROP_UNKNOWN_TYPE,
    RECORDED_MARK,
    Recorder,
)
from celery_prom.workers import WORKER_EVENTS, WorkerLiveness

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
#: Larger payloads are dropped undecoded; a batch of Celery events is a few kilobytes.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
#: Seconds a read waits before the stream checks whether it should stop.
POLL_INTERVAL = 1.0
#: An idle subscription is pinged after this many seconds, and declared dead when the
#: answer takes longer than that again.
IDLE_PING_AFTER = 10.0
_RECV_SIZE = 1 << 20
_PING = b"*1\r\n$4\r\nPING\r\n"

Payload = Callable[[bytes], None]

_SCAN = json.JSONDecoder().raw_decode


class ConnectionLost(ConnectionError):
    """The broker closed the event stream or stopped answering."""


class Undecodable(ValueError):
    """A payload that is not a JSON Celery event message."""


# -- decoding ------------------------------------------------------------------------------


def decode_kombu_envelope(payload: bytes) -> object:
    """The event (or batch) inside a kombu message as Redis carries it: a JSON envelope
    whose body is the serialized event, usually base64-encoded."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Undecodable("too large")
    envelope = _json(payload)
    if not isinstance(envelope, dict):
        raise Undecodable("not a kombu message")
    body = envelope.get("body")
    properties = envelope.get("properties")
    if isinstance(properties, dict) and properties.get("body_encoding") == "base64":
        if not isinstance(body, str):
            raise Undecodable("body is not base64 text")
        try:
            body = binascii.a2b_base64(body)
        except (binascii.Error, ValueError):
            raise Undecodable("body is not base64") from None
    return decode_body(body, envelope.get("content-type"))


def decode_body(body: object, content_type: object) -> object:
    """A serialized event: JSON only, whatever else the message claims to carry."""
    if content_type != JSON_CONTENT_TYPE:
        raise Undecodable(f"content type {content_type!r}")
    if not isinstance(body, (bytes, bytearray, str)):
        raise Undecodable("no body")
    if len(body) > MAX_PAYLOAD_BYTES:
        raise Undecodable("too large")
    return _json(body)


def _json(data: bytes | bytearray | str) -> object:
    # The decoder's scanner, without json.loads' encoding detection and whitespace regexes:
    # a fifth of the cost of an event at flood rates. Messages are UTF-8 (kombu's JSON).
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        value, end = _SCAN(text)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        raise Undecodable("not JSON") from None
    if end != len(text) and text[end:].strip():
        raise Undecodable("data after the JSON document")
    return value


# -- routing -------------------------------------------------------------------------------


class LossEstimator:
    """Estimates events sent while the exporter was disconnected.

    Every Celery event carries its sender's Lamport clock, which the sender advances by
    one for each event it sends. After a reconnect, the distance between a sender's last
    clock before the outage and its first one after it, less one, is the number of events
    it sent in between that never arrived. Senders also advance their clock for other
    messages (remote-control replies) and jump it forward when they receive other workers'
    events (gossip), so this is an upper bound; gaps between two events of the same
    connection are not counted, since nothing is lost while connected.
    """

    def __init__(self, recorder: Recorder, max_senders: int = 10_000) -> None:
        self._recorder = recorder
        self._max_senders = max_senders
        self._last: dict[str, tuple[int, int]] = {}
        self._epoch = 0
        # The receiver observes while a scrape's purge of offline workers forgets.
        self._lock = threading.Lock()

    def new_connection(self) -> None:
        with self._lock:
            self._epoch += 1

    def forget(self, hostname: str) -> None:
        with self._lock:
            self._last.pop(hostname, None)

    def observe(self, hostname: object, clock: object) -> None:
        if type(clock) is not int or not isinstance(hostname, str):
            return
        with self._lock:
            lost = self._advance(hostname, clock)
        if lost:
            self._recorder.count_lost(lost)

    def _advance(self, hostname: str, clock: int) -> int:
        """Record a sender's clock; the events it sent that never arrived."""
        last = self._last.get(hostname)
        if last is None and len(self._last) >= self._max_senders:
            return 0
        self._last[hostname] = (clock, self._epoch)
        if last is None or last[1] == self._epoch:
            return 0
        return max(0, clock - last[0] - 1)


class WorkerQueues(Protocol):
    """Which queue a worker's tasks come from, where that can be known."""

    def notice(self, hostname: str) -> None: ...

    def queue_of(self, hostname: object) -> str | None: ...


class EventRouter:
    """Sends each decoded event where it belongs; never raises on bad input."""

    def __init__(
        self,
        recorder: Recorder,
        liveness: WorkerLiveness,
        losses: LossEstimator,
        queues: WorkerQueues,
    ) -> None:
        self._recorder = recorder
        self._liveness = liveness
        self._losses = losses
        self._queues = queues

    def on_redis_payload(self, payload: bytes) -> None:
        try:
            body = decode_kombu_envelope(payload)
        except Undecodable:
            self._recorder.skip(DROP_UNDECODABLE)
            return
        self.route(body)

    def on_message_body(self, body: object, content_type: object) -> None:
        try:
            decoded = decode_body(body, content_type)
        except Undecodable:
            self._recorder.skip(DROP_UNDECODABLE)
            return
        self.route(decoded)

    def route(self, body: object) -> None:
        """One event, or a ``task.multi`` batch of them."""
        if isinstance(body, list):
            for event in body:
                self._route_one(event)
        else:
            self._route_one(body)

    def _route_one(self, event: object) -> None:
        if not isinstance(event, dict):
            self._recorder.skip(DROP_MALFORMED)
            return
        event_type = event.get("type")
        if not isinstance(event_type, str):
            self._recorder.skip(DROP_MALFORMED)
            return
        hostname = event.get("hostname")
        self._losses.observe(hostname, event.get("clock"))
        if event_type.startswith("task-"):
            if event.get(RECORDED_MARK):
                self._recorder.skip(DROP_RECORDED_BY_WORKER)
            elif not self._liveness.accepts(hostname):
                self._recorder.skip(DROP_OFFLINE_WORKER)
            else:
                if event_type == "task-received":
                    self._complete_received(event)
                self._recorder.record(event)
        elif event_type in WORKER_EVENTS:
            reason = self._liveness.observe(event)
            if reason is None:
                self._queues.notice(event["hostname"])
                self._recorder.count_received()
            else:
                self._recorder.skip(reason)
        else:
            self._recorder.skip(DROP_UNKNOWN_TYPE)

    def _complete_received(self, event: dict[str, Any]) -> None:
        # Celery's task-received names no queue (the worker tap adds it); datetimes come
        # in kombu's JSON encoding.
        if "queue" not in event:
            queue = self._queues.queue_of(event.get("hostname"))
            if queue is not None:
                event["queue"] = queue
        eta = event.get("eta")
        if isinstance(eta, dict):
            event["eta"] = eta.get("__value__")


# -- streams -------------------------------------------------------------------------------


class EventStream(Protocol):
    """One connection's worth of events: connect, pump until it breaks, close."""

    #: Exceptions meaning the broker connection failed (the receiver reconnects).
    errors: tuple[type[BaseException], ...]

    def connect(self) -> None: ...

    def pump(self, stopped: threading.Event) -> None: ...

    def close(self) -> None: ...


class RedisEventStream:
    """Reads the event PUB/SUB topic straight off the socket (see the module docstring)."""

    def __init__(
        self,
        url: str,
        transport_options: Mapping[str, Any],
        exchange: str,
        timeout: float,
        on_payload: Payload,
    ) -> None:
        self._kombu = Connection(
            url,
            transport_options={
                **transport_options,
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry_on_timeout": False,
            },
        )
        self._exchange = exchange
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

    def __init__(
        self,
        url: str,
        transport_options: Mapping[str, Any],
        exchange: str,
        timeout: float,
        on_body: Callable[[object, object], None],
    ) -> None:
        self._connection = Connection(
            url,
            connect_timeout=timeout,
            heartbeat=IDLE_PING_AFTER * 2,
            transport_options=dict(transport_options),
        )
        self._exchange_name = exchange
        self._on_body = on_body
        self._consumer: Consumer | None = None
        self.errors: tuple[type[BaseException], ...] = (
            OSError,
            *self._connection.connection_errors,
            *self._connection.channel_errors,
        )

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
