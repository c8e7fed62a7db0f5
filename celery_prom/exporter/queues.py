"""What the broker tells of its queues, read at scrape time: lengths, consumer counts, and
where the broker can tell, latency and unacknowledged messages.

Each scrape asks the broker afresh (nothing is cached between scrapes, so a number is
never stale): Redis with pipelined commands (``redis_queues``), RabbitMQ with passive
declares, SQS with its queue attributes (``sqs``), other kombu transports however kombu can
size a queue. The query runs under ``BoundedCall``, so a broker that stops answering turns
into ``celery_prom_broker_up 0`` and a failed ``queues`` collector, never into a hung scrape.

Which queues: those named on the command line, the app's ``task_queues`` (``celery prom``),
and those workers report consuming from (``active_queues``), which ``QueueDiscovery`` asks
for in the background so that no scrape ever waits on a control round trip.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kombu import Connection
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from celery_prom import metrics
from celery_prom.exporter.broker import (
    BoundedCall,
    BrokerStatus,
    close_connection,
    connection_errors,
)
from celery_prom.faults import describe_error
from celery_prom.metrics import new_family

logger = logging.getLogger(__name__)

#: Seconds between two ``active_queues`` inspections.
DISCOVERY_INTERVAL = 30.0


@dataclass(frozen=True)
class QueueSize:
    """What the broker tells of one queue; a field it cannot tell is None, and has no series."""

    name: str
    #: Messages ready; None for the label value that only counts unacknowledged messages
    #: the exporter did not attribute to a queue (``OVERFLOW_LABEL_VALUE``, Redis).
    length: int | None
    consumers: int | None
    unacked: int | None = None
    delayed: int | None = None
    #: Seconds since the oldest message waiting was published.
    latency: float | None = None
    #: Seconds since the oldest unacknowledged message was delivered.
    unacked_oldest: float | None = None


class QueueNames:
    """The queues to report: fixed ones plus those discovered, up to a cap."""

    def __init__(self, fixed: Iterable[str], cap: int) -> None:
        self._names = dict.fromkeys(fixed)
        self._cap = cap
        self._lock = threading.Lock()

    def add(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                if name not in self._names and len(self._names) < self._cap:
                    self._names[name] = None

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._names))


class QueueDiscovery:
    """Learns the queues workers consume from, asking every ``interval`` seconds and
    whenever a worker it does not know yet shows up.

    Celery's own ``task-received`` event does not say which queue the task came from; a
    worker that consumes exactly one queue answers that, so ``queue_of`` gives it.
    """

    def __init__(
        self,
        app: Any,
        names: QueueNames,
        interval: float = DISCOVERY_INTERVAL,
        reply_timeout: float = 1.0,
    ) -> None:
        self._app = app
        self._names = names
        self._interval = interval
        self._reply_timeout = reply_timeout
        self._worker_queues: dict[str, tuple[str, ...]] = {}
        # Workers already asked about since the last regular round: one that does not
        # answer (remote control off, busy) must not trigger a broadcast per heartbeat.
        self._asked: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = connection_errors(app.connection_for_read())
        # Each round's reply queue is deleted once read. Given an expiry as well, kombu 5.7
        # on Redis keeps a deadline for its binding (``_kombu.binding_deadlines``) that
        # outlives the exporter by an hour: the exporter would leave it behind.
        app.control.mailbox.reply_queue_expires = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="celery-prom-queue-discovery", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wanted.set()

    def notice(self, hostname: str) -> None:
        """A worker sent an event; ask for its queues soon if they are not known."""
        with self._lock:
            if hostname in self._worker_queues or hostname in self._asked:
                return
            self._asked.add(hostname)
        self._wanted.set()

    def queue_of(self, hostname: object) -> str | None:
        """The queue a worker consumes from, when it consumes exactly one."""
        queues = self.queues_of(hostname)
        return queues[0] if len(queues) == 1 else None

    def queues_of(self, hostname: object) -> tuple[str, ...]:
        """The queues a worker consumes from, as far as known."""
        return self._worker_queues.get(hostname, ()) if isinstance(hostname, str) else ()

    def forget(self, hostname: str) -> None:
        """Drop what is known of a worker that went offline."""
        with self._lock:
            self._worker_queues = {
                name: queues for name, queues in self._worker_queues.items() if name != hostname
            }
            self._asked.discard(hostname)

    def refresh(self) -> None:
        replies = self._app.control.inspect(timeout=self._reply_timeout).active_queues()
        by_worker = active_queues_by_worker(replies)
        for queues in by_worker.values():
            self._names.add(queues)
        with self._lock:
            self._worker_queues = {**self._worker_queues, **by_worker}
        logger.debug("celery-prom: %d workers said which queues they consume", len(by_worker))

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wanted.clear()
            try:
                self.refresh()
            except self._errors as exc:  # broker down: try again next round
                logger.warning(
                    "celery-prom: asking workers for their queues failed: %s", describe_error(exc)
                )
            except Exception:  # a dead thread would end discovery for good
                logger.exception("celery-prom: asking workers for their queues failed")
            if not self._wanted.wait(self._interval):
                with self._lock:
                    self._asked.clear()  # a regular round: silent workers may be asked again


def active_queues_by_worker(replies: object) -> dict[str, tuple[str, ...]]:
    """Each worker's queue names from ``inspect().active_queues()``, ignoring anything odd."""
    if not isinstance(replies, Mapping):
        return {}
    by_worker: dict[str, tuple[str, ...]] = {}
    for hostname, queues in replies.items():
        if not isinstance(hostname, str) or not isinstance(queues, list):
            continue
        names = [
            name
            for queue in queues
            if isinstance(queue, Mapping)
            and isinstance(name := queue.get("name"), str)
            and 0 < len(name) <= metrics.MAX_LABEL_VALUE_LENGTH
        ]
        by_worker[hostname] = tuple(dict.fromkeys(names))
    return by_worker


class QueueProbe(Protocol):
    """Sizes queues on one broker; called from one thread at a time."""

    def sizes(self, names: Sequence[str]) -> list[QueueSize]: ...


class ConnectedQueueProbe(ABC):
    """A probe that keeps one broker connection between scrapes.

    Any failure drops the connection, so the next scrape starts from a fresh one rather
    than from a channel left in an unknown state.
    """

    def __init__(self) -> None:
        self._connection: Connection | None = None
        self._channel: Any = None

    def sizes(self, names: Sequence[str]) -> list[QueueSize]:
        try:
            return self._sizes(names)
        except BaseException:
            self._reset()
            raise

    @abstractmethod
    def _sizes(self, names: Sequence[str]) -> list[QueueSize]: ...

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            close_connection(connection)


class AmqpQueueProbe(ConnectedQueueProbe):
    """Ready messages and consumers per queue from passive ``queue.declare``.

    Declaring a missing queue passively makes RabbitMQ close the channel (404), so a
    missing queue counts as empty and the next queue gets a fresh channel.
    """

    def __init__(
        self,
        url: str,
        transport_options: Mapping[str, Any],
        timeout: float,
        exchange: str,
        *,
        ssl: Mapping[str, Any] | bool = False,
    ) -> None:
        super().__init__()
        self._url = url
        self._options = {**transport_options, "read_timeout": timeout, "write_timeout": timeout}
        self._timeout = timeout
        self._exchange = exchange
        self._ssl = ssl

    def _sizes(self, names: Sequence[str]) -> list[QueueSize]:
        connection = self._connect()
        # A round trip even when there is no queue to size; a missing exchange still
        # proves the broker answered.
        self._ask(
            connection,
            lambda channel: channel.exchange_declare(self._exchange, "topic", passive=True),
        )
        sizes = []
        for name in names:
            reply = self._ask(
                connection,
                lambda channel, name=name: channel.queue_declare(queue=name, passive=True),
            )
            if reply is None:
                sizes.append(QueueSize(name, 0, 0))
            else:
                sizes.append(QueueSize(name, int(reply.message_count), int(reply.consumer_count)))
        return sizes

    def _ask(self, connection: Connection, method: Any) -> Any:
        """``method(channel)``, or None when the broker answered 404 (channel reopened)."""
        if self._channel is None:
            self._channel = connection.channel()
        try:
            return method(self._channel)
        except connection.channel_errors as exc:
            if getattr(exc, "code", None) != 404:
                raise
            self._channel = None
            return None

    def _connect(self) -> Connection:
        if self._connection is None:
            connection = Connection(
                self._url,
                ssl=self._ssl,
                connect_timeout=self._timeout,
                transport_options=self._options,
            )
            connection.connect()
            self._connection = connection
        return self._connection


class KombuQueueProbe:
    """Any other kombu transport: the message count of a passive declare, where kombu
    implements one; a queue it cannot size gets no sample."""

    def __init__(
        self,
        url: str,
        transport_options: Mapping[str, Any],
        *,
        ssl: Mapping[str, Any] | bool = False,
    ) -> None:
        self._connection = Connection(url, ssl=ssl, transport_options=dict(transport_options))

    def sizes(self, names: Sequence[str]) -> list[QueueSize]:
        channel = self._connection.default_channel
        sizes = []
        for name in names:
            try:
                reply = channel.queue_declare(queue=name, passive=True)
            except NotImplementedError:
                continue
            except self._connection.channel_errors:
                sizes.append(QueueSize(name, 0, None))  # not declared yet: nothing waiting
                continue
            sizes.append(QueueSize(name, int(reply.message_count), None))
        return sizes


def probe_for(
    driver: str,
    url: str,
    transport_options: Mapping[str, Any],
    timeout: float,
    event_exchange: str,
    *,
    ssl: Mapping[str, Any] | bool = False,
) -> QueueProbe:
    """The probe for a broker whose driver type (``broker.transport_kind``) is ``driver``."""
    # Imported on use: these build on this module.
    if driver == "redis":
        from celery_prom.exporter.redis_queues import RedisQueueProbe  # noqa: PLC0415

        return RedisQueueProbe(url, transport_options, timeout, ssl=ssl)
    if driver == "amqp":
        return AmqpQueueProbe(url, transport_options, timeout, event_exchange, ssl=ssl)
    if driver == "sqs":
        from celery_prom.exporter.sqs import SqsQueueProbe  # noqa: PLC0415

        return SqsQueueProbe(url, transport_options, timeout)
    return KombuQueueProbe(url, transport_options, ssl=ssl)


class QueueCollector:
    """Serves what the probe tells of each queue, asked from the broker on every scrape.

    A failed or timed-out query raises (the scrape reports this collector failed) and
    marks the broker down; it never serves the last numbers it had.
    """

    def __init__(
        self,
        names: QueueNames,
        probe: QueueProbe,
        status: BrokerStatus,
        call: BoundedCall[list[QueueSize]],
    ) -> None:
        self._names = names
        self._probe = probe
        self._status = status
        self._call = call

    def collect(self) -> Iterator[Metric]:
        names = self._names.names()
        try:
            sizes = self._call(lambda: self._probe.sizes(names))
        except Exception as exc:
            self._status.query_failed(describe_error(exc))
            raise
        self._status.query_succeeded()
        yield _gauge(metrics.QUEUE_LENGTH, [(size.name, size.length) for size in sizes])
        yield _gauge(metrics.QUEUE_LATENCY, [(size.name, size.latency) for size in sizes])
        yield _gauge(metrics.ACTIVE_CONSUMERS, [(size.name, size.consumers) for size in sizes])
        yield _gauge(metrics.QUEUE_UNACKED, [(size.name, size.unacked) for size in sizes])
        yield _gauge(
            metrics.QUEUE_UNACKED_OLDEST, [(size.name, size.unacked_oldest) for size in sizes]
        )
        yield _gauge(metrics.QUEUE_DELAYED, [(size.name, size.delayed) for size in sizes])


def _gauge(family: metrics.Family, values: Iterable[tuple[str, float | None]]) -> Metric:
    """``family`` with a sample per queue the broker gave a value for."""
    gauge = new_family(family, GaugeMetricFamily)
    for name, value in values:
        if value is not None:
            gauge.add_metric((name,), value)
    return gauge
