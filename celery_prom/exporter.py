"""The exporter: an event receiver that never gives up, and the endpoint it feeds.

``EventReceiver.run`` connects, pumps events until the connection breaks, and connects
again after a capped exponential backoff with jitter, for as long as the process lives;
a broker fault is logged (password masked) and reported as ``celery_prom_broker_up 0``,
never a reason to exit. ``Exporter`` wires the receiver, the collectors and the HTTP
endpoint together.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from celery import Celery
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from celery_prom import metrics
from celery_prom.broker import BoundedCall, BrokerStatus, describe_error, transport_kind
from celery_prom.config import ExporterSettings
from celery_prom.events import (
    EventRouter,
    EventStream,
    KombuEventStream,
    LossEstimator,
    RedisEventStream,
)
from celery_prom.exposition import TaskExposition, render_registry
from celery_prom.http import Endpoint, HealthReport, MetricsServer
from celery_prom.metrics import new_family
from celery_prom.queues import QueueCollector, QueueDiscovery, QueueNames, QueueSize, probe_for
from celery_prom.recorder import Recorder
from celery_prom.store import LabelOverflowCollector, TaskStore
from celery_prom.webconfig import WebConfigFile
from celery_prom.workers import WorkerLiveness

logger = logging.getLogger(__name__)


class Collector(Protocol):
    def collect(self) -> Iterator[Metric]: ...


class Backoff:
    """Capped exponential backoff with jitter: each delay is drawn from the upper half of
    ``first * 2**n`` (capped), so a fleet of exporters does not reconnect in lockstep."""

    def __init__(
        self, first: float = 0.5, cap: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self.first = first
        self.cap = cap
        self._rng = rng or random.Random()
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * 2**self._failures)
        self._failures = min(self._failures + 1, 32)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._failures = 0


class EventReceiver:
    """Keeps an event stream connected for as long as it runs; returns only when stopped.

    A connection that breaks within ``stable_after`` seconds of being made does not reset
    the backoff, so a broker that accepts and drops connections is not hammered.
    """

    def __init__(
        self,
        new_stream: Callable[[], EventStream],
        status: BrokerStatus,
        liveness: WorkerLiveness,
        losses: LossEstimator,
        *,
        safe_url: str,
        backoff: Backoff | None = None,
        stable_after: float = 10.0,
    ) -> None:
        self._new_stream = new_stream
        self._status = status
        self._liveness = liveness
        self._losses = losses
        self._safe_url = safe_url
        self._backoff = backoff or Backoff()
        self._stable_after = stable_after
        self.stopped = threading.Event()

    def run(self) -> None:
        connected_before = False
        while not self.stopped.is_set():
            stream = self._new_stream()
            # TypeError and ValueError: transport options the client library rejects; the
            # message says which, and /health shows it until the options are fixed.
            connect_errors: tuple[type[BaseException], ...] = (
                *stream.errors,
                TypeError,
                ValueError,
            )
            try:
                stream.connect()
            except connect_errors as exc:
                self._close(stream)
                self._wait_after_failure("cannot connect to", exc)
                continue
            self._on_connected(reconnect=connected_before)
            connected_before = True
            started = time.monotonic()
            try:
                stream.pump(self.stopped)
            except stream.errors as exc:
                if time.monotonic() - started >= self._stable_after:
                    self._backoff.reset()
                self._liveness.hold_purge()
                self._wait_after_failure("lost the event stream from", exc)
            finally:
                self._close(stream)

    def stop(self) -> None:
        self.stopped.set()

    def _on_connected(self, reconnect: bool) -> None:
        self._losses.new_connection()
        self._liveness.resume_purge()
        self._status.receiver_connected(reconnect)
        logger.info("celery-prom: receiving events from %s", self._safe_url)

    def _wait_after_failure(self, what: str, exc: BaseException) -> None:
        error = describe_error(exc)
        self._status.receiver_lost(error)
        delay = self._backoff.next_delay()
        logger.warning(
            "celery-prom: %s %s (%s); retrying in %.1fs", what, self._safe_url, error, delay
        )
        self.stopped.wait(delay)

    @staticmethod
    def _close(stream: EventStream) -> None:
        try:
            stream.close()
        except stream.errors as exc:
            logger.debug("celery-prom: closing a broken event stream: %s", describe_error(exc))


class TimedCollectors:
    """Runs named collectors, reporting each one's success and duration.

    A collector that raises contributes no samples and ``celery_prom_collector_success 0``;
    the scrape itself always succeeds (the node_exporter convention).
    """

    def __init__(self, collectors: Mapping[str, Collector]) -> None:
        self._collectors = dict(collectors)

    def collect(self) -> Iterator[Metric]:
        success = new_family(metrics.COLLECTOR_SUCCESS, GaugeMetricFamily)
        duration = new_family(metrics.COLLECTOR_DURATION, GaugeMetricFamily)
        for name, collector in self._collectors.items():
            started = time.perf_counter()
            try:
                families = list(collector.collect())
            except Exception as exc:  # noqa: BLE001 - a failing collector must not fail the scrape
                logger.warning("celery-prom: collector %s failed: %s", name, describe_error(exc))
                families = []
                ok = False
            else:
                ok = True
            duration.add_metric((name,), time.perf_counter() - started)
            success.add_metric((name,), 1 if ok else 0)
            yield from families
        yield success
        yield duration


class Exporter:
    """Everything one ``celery-prom exporter`` process runs."""

    def __init__(self, settings: ExporterSettings, app: Any = None) -> None:
        self.settings = settings
        self.app = app if app is not None else _bare_app(settings)
        self.store = TaskStore(
            settings.runtime_buckets, settings.queue_wait_buckets, settings.limits
        )
        self.recorder = Recorder(self.store)
        self.losses = LossEstimator(self.recorder)
        self.liveness = WorkerLiveness(
            settings.worker_timeout,
            settings.purge_offline_after,
            self._forget_worker,
            max_workers=settings.limits.hostnames,
        )
        self.status = BrokerStatus()
        # Raises ImportError when kombu knows the transport but its client library is missing.
        driver, transport = transport_kind(settings.broker_url, settings.transport_options)
        self._events_from_redis = RedisEventStream.reads(driver, transport)
        self.queue_names = QueueNames(settings.queues, settings.limits.queues)
        self.discovery = QueueDiscovery(self.app, self.queue_names)
        self.router = EventRouter(self.recorder, self.liveness, self.losses, self.discovery)
        self.receiver = EventReceiver(
            self._new_stream,
            self.status,
            self.liveness,
            self.losses,
            safe_url=settings.safe_broker_url,
        )
        self.exposition = TaskExposition(self.store)
        self.registry = self._registry(driver)
        self.server: MetricsServer | None = None

    def bind(self) -> None:
        """Claim the port (raises ``http.PortInUse`` or ``OSError`` with a clear message,
        or ``ConfigError`` for an unusable web-config file)."""
        web_config = None
        if self.settings.web_config is not None:
            web_config = WebConfigFile(self.settings.web_config)
        self.server = MetricsServer(
            self.settings.host,
            self.settings.port,
            Endpoint(
                title="celery-prom exporter", render_metrics=self.render, check_health=self.health
            ),
            web_config,
        )

    def run(self) -> None:
        """Serve and receive until ``stop()``; broker faults never end this."""
        if self.server is None:
            self.bind()
        assert self.server is not None
        self.server.start()
        logger.info(
            "celery-prom: serving http://%s:%s/metrics for broker %s",
            self.server.host,
            self.server.port,
            self.settings.safe_broker_url,
        )
        self.discovery.start()
        try:
            self.receiver.run()
        finally:
            self.discovery.stop()
            self.server.stop()

    def stop(self) -> None:
        self.receiver.stop()

    def render(self, openmetrics: bool) -> str:
        return self.exposition.render(openmetrics) + render_registry(self.registry, openmetrics)

    def health(self) -> HealthReport:
        checks: dict[str, Any] = {"broker_url": self.settings.safe_broker_url}
        try:
            self.render(openmetrics=False)
        except Exception as exc:  # noqa: BLE001 - /health reports it, never fails itself
            checks["metrics"] = describe_error(exc)
            return HealthReport(False, checks)
        checks["metrics"] = "ok"
        up = self.status.up
        checks["broker"] = "up" if up else "down"
        if not up:
            checks["broker_error"] = self.status.error
        return HealthReport(up, checks)

    def _registry(self, driver: str) -> CollectorRegistry:
        settings = self.settings
        probe = probe_for(
            driver,
            settings.broker_url,
            settings.transport_options,
            settings.broker_timeout,
            settings.event_exchange,
        )
        queues = QueueCollector(
            self.queue_names,
            probe,
            self.status,
            BoundedCall[list[QueueSize]](settings.broker_timeout, "celery-prom-queue-query"),
        )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TimedCollectors({"queues": queues, "workers": self.liveness}))
        registry.register(self.status)
        registry.register(self.recorder)
        registry.register(LabelOverflowCollector(self.store))
        registry.register(ProcessCollector(registry=None))
        registry.register(PlatformCollector(registry=None))
        return registry

    def _new_stream(self) -> EventStream:
        settings = self.settings
        if self._events_from_redis:
            return RedisEventStream(
                settings.broker_url,
                settings.transport_options,
                settings.event_exchange,
                settings.broker_timeout,
                self.router.on_redis_payload,
            )
        return KombuEventStream(
            settings.broker_url,
            settings.transport_options,
            settings.event_exchange,
            settings.broker_timeout,
            self.router.on_message_body,
        )

    def _forget_worker(self, hostname: str) -> None:
        self.store.forget_hostname(hostname)
        self.recorder.forget_hostname(hostname)
        self.losses.forget(hostname)
        self.discovery.forget(hostname)
        logger.info("celery-prom: forgot offline worker %s", hostname)


def _bare_app(settings: ExporterSettings) -> Any:
    """A Celery app for remote control (queue discovery) when no app was given."""
    app = Celery("celery-prom", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=dict(settings.transport_options),
        event_exchange=settings.event_exchange,
    )
    return app
