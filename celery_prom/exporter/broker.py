"""What the exporter knows about its broker: reachable or not, and how to ask it safely.

``BrokerStatus`` combines the event receiver's connection state with the result of the
scrape's own broker query, and serves ``celery_prom_broker_up`` and the reconnect count.
``BoundedCall`` runs broker queries on a helper thread so that a frozen broker (a stopped
process still holding its TCP connections) costs a scrape a bounded wait, never a hang.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

from kombu import Connection
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from celery_prom import metrics
from celery_prom.faults import describe_error
from celery_prom.metrics import new_family

T = TypeVar("T")

logger = logging.getLogger(__name__)


class BrokerTimeout(Exception):
    """The broker did not answer in time."""


def connection_errors(connection: Connection) -> tuple[type[BaseException], ...]:
    """What a broker connection raises when the broker fails: the socket's errors and the
    transport's own."""
    return (OSError, *connection.connection_errors, *connection.channel_errors)


def close_connection(connection: Connection) -> None:
    """Release a kombu connection, broken or not, and its transport's poller.

    kombu's Redis transport opens an epoll descriptor per transport and leaves closing it
    to the garbage collector, which in a long-running process may not come for hours: an
    exporter reconnecting to a flapping broker would pile them up.
    """
    transport = connection.transport
    try:
        connection.release()
    except connection_errors(connection) as exc:
        logger.debug("celery-prom: closing a broken broker connection: %s", describe_error(exc))
    poller: Any = getattr(getattr(transport, "cycle", None), "poller", None)
    if poller is not None:
        poller.close()


def transport_kind(
    url: str, transport_options: Mapping[str, Any] | None = None
) -> tuple[str, type]:
    """The driver type (``redis``, ``amqp``...) and transport class kombu uses for ``url``."""
    connection = Connection(url, transport_options=dict(transport_options or {}))
    try:
        return connection.transport.driver_type, type(connection.transport)
    finally:
        close_connection(connection)


class BrokerStatus:
    """Thread-safe broker state for /metrics and /health."""

    def __init__(self) -> None:
        self._receiving = False
        self._query_ok: bool | None = None  # None until a scrape has queried the broker
        # Kept apart because the receiver's error names why it cannot connect (refused,
        # bad password), while a scrape's query that meets the same broker may only see
        # its own timeout.
        self._receiver_error = "not connected yet"
        self._query_error: str | None = None
        self._reconnects = 0
        self._lock = threading.Lock()

    @property
    def up(self) -> bool:
        with self._lock:
            return self._receiving and self._query_ok is not False

    @property
    def error(self) -> str | None:
        """Why the broker is down: the receiver's connection error first, as the cause."""
        with self._lock:
            if not self._receiving:
                return self._receiver_error
            return self._query_error if self._query_ok is False else None

    def receiver_connected(self, reconnect: bool) -> None:
        with self._lock:
            self._receiving = True
            if reconnect:
                self._reconnects += 1

    def receiver_lost(self, error: str) -> None:
        with self._lock:
            self._receiving = False
            self._receiver_error = error

    def query_succeeded(self) -> None:
        with self._lock:
            self._query_ok = True

    def query_failed(self, error: str) -> None:
        with self._lock:
            self._query_ok = False
            self._query_error = error

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            up = self._receiving and self._query_ok is not False
            reconnects = self._reconnects
        gauge = new_family(metrics.BROKER_UP, GaugeMetricFamily)
        gauge.add_metric((), 1 if up else 0)
        yield gauge
        counter = new_family(metrics.BROKER_RECONNECTS, CounterMetricFamily)
        counter.add_metric((), reconnects)
        yield counter


class BoundedCall(Generic[T]):
    """Runs one broker query at a time on a helper thread, waiting ``timeout`` for it.

    A query that does not return in time keeps its thread (a socket timeout ends it
    later), and callers meanwhile wait on that same query instead of piling up threads.
    The thread is a daemon of its own rather than a ``ThreadPoolExecutor``'s: those are
    joined when the interpreter exits, so a query stuck on a frozen broker would hold up
    the exporter's exit.
    """

    def __init__(self, timeout: float, name: str) -> None:
        self.timeout = timeout
        self._name = name
        self._query: Future[T] | None = None
        self._lock = threading.Lock()

    def __call__(self, work: Callable[[], T]) -> T:
        with self._lock:
            query = self._query
            if query is None or query.done():
                query = self._query = Future()
                threading.Thread(
                    target=_settle, args=(query, work), name=self._name, daemon=True
                ).start()
        try:
            return query.result(self.timeout)
        except FutureTimeout:
            raise BrokerTimeout(f"the broker did not answer within {self.timeout:g}s") from None


def _settle(future: Future[T], work: Callable[[], T]) -> None:
    try:
        future.set_result(work())
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
        future.set_exception(exc)
