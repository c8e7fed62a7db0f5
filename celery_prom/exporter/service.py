"""The exporter process: ``Exporter`` wires the event receiver, the router, the scrape-time
collectors and the HTTP endpoint (``/metrics``, ``/health``, and the workers to scrape on
``/sd/workers``) together, and forgets offline workers on its own schedule.

On a transport that cannot broadcast (SQS: ``broker.transport_kind``) no worker event or
remote-control reply would ever arrive, so the exporter listens for none and asks workers
nothing: it declares no event queue and no reply queue, polls nothing, and serves the queues
it is given. Liveness and task counts there come from scraping the workers themselves.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from prometheus_client import PlatformCollector, ProcessCollector

from celery_prom.config import ExporterSettings
from celery_prom.endpoint import MetricsEndpoint
from celery_prom.exporter.broker import BoundedCall, BrokerStatus, transport_kind
from celery_prom.exporter.collectors import TimedCollectors
from celery_prom.exporter.dropped import DroppedEvents
from celery_prom.exporter.liveness import WorkerLiveness
from celery_prom.exporter.losses import LossEstimator
from celery_prom.exporter.queues import (
    QueueCollector,
    QueueDiscovery,
    QueueNames,
    QueueSize,
    probe_for,
)
from celery_prom.exporter.receiver import EventReceiver
from celery_prom.exporter.router import EventRouter
from celery_prom.exporter.streams import (
    EventSource,
    EventStream,
    KombuEventStream,
    RedisEventStream,
)
from celery_prom.exporter.targets import WorkerTargets
from celery_prom.http import Endpoint, HealthReport, MetricsServer
from celery_prom.store import LabelOverflowCollector
from celery_prom.webconfig import WebConfigFile

logger = logging.getLogger(__name__)

#: Where Prometheus' http_sd_configs finds the workers to scrape.
SD_WORKERS = "/sd/workers"
#: Seconds between two looks for workers silent for longer than the purge delay.
PURGE_INTERVAL = 1.0


class Exporter:
    """Everything one ``celery-prom exporter`` process runs."""

    def __init__(self, settings: ExporterSettings, app: Any = None) -> None:
        self.settings = settings
        self.app = app if app is not None else _bare_app(settings)
        self.endpoint = MetricsEndpoint(settings)
        self.dropped = DroppedEvents(self.endpoint.recorder)
        self.losses = LossEstimator(self.dropped)
        self.liveness = WorkerLiveness(
            settings.worker_timeout,
            settings.purge_offline_after,
            max_workers=settings.limits.hostnames,
        )
        # Raises ImportError when kombu knows the transport but its client library is missing.
        self.transport = transport_kind(settings.broker_url, settings.transport_options)
        self.status = BrokerStatus(events=self.transport.broadcasts)
        self._events_from_redis = RedisEventStream.reads(self.transport.driver, self.transport.cls)
        self._source = EventSource(
            settings.broker_url,
            settings.transport_options,
            settings.event_exchange,
            settings.broker_timeout,
            settings.broker_ssl,
        )
        self.queue_names = QueueNames(settings.queues, settings.limits.queues)
        self.discovery = QueueDiscovery(self.app, self.queue_names)
        self.router = EventRouter(
            self.endpoint.recorder, self.dropped, self.liveness, self.losses, self.discovery
        )
        self.receiver = EventReceiver(
            self._new_stream,
            self.status,
            self.liveness,
            self.losses,
            safe_url=settings.safe_broker_url,
        )
        self.targets = WorkerTargets(self.liveness, self.discovery)
        self._register_collectors(self.transport.driver)
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
                title="celery-prom exporter",
                render_metrics=self.endpoint.render,
                check_health=self.health,
                pages={SD_WORKERS: self.targets.render},
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
        try:
            if self.transport.broadcasts:
                self._receive_events()
            else:
                logger.warning("celery-prom: %s", self._without_events)
                self.receiver.stopped.wait()
        finally:
            self.server.stop()

    def stop(self) -> None:
        self.receiver.stop()

    def _receive_events(self) -> None:
        self.discovery.start()
        threading.Thread(
            target=self._purge_offline_workers, name="celery-prom-purge", daemon=True
        ).start()
        try:
            self.receiver.run()
        finally:
            self.discovery.stop()

    @property
    def _without_events(self) -> str:
        return (
            f"the {self.transport.driver} transport cannot broadcast Celery events: no worker "
            "liveness or task counts here, and only the queues given are reported; scrape the "
            "workers' own endpoints (celery_prom.install) for those"
        )

    def health(self) -> HealthReport:
        """The broker as last seen by the receiver and the last scrape; asks nobody."""
        up = self.status.up
        checks: dict[str, Any] = {
            "broker_url": self.settings.safe_broker_url,
            "broker": "up" if up else "down",
        }
        if not up:
            checks["broker_error"] = self.status.error
        if not self.transport.broadcasts:
            checks["events"] = self._without_events
        return self.endpoint.health(up, checks)

    def _register_collectors(self, driver: str) -> None:
        settings = self.settings
        probe = probe_for(
            driver,
            settings.broker_url,
            settings.transport_options,
            settings.broker_timeout,
            settings.event_exchange,
            ssl=settings.broker_ssl,
        )
        queues = QueueCollector(
            self.queue_names,
            probe,
            self.status,
            BoundedCall[list[QueueSize]](settings.broker_timeout, "celery-prom-queue-query"),
        )
        for collector in (
            TimedCollectors({"queues": queues, "workers": self.liveness}),
            self.status,
            self.dropped,
            LabelOverflowCollector(self.endpoint.store),
            ProcessCollector(registry=None),
            PlatformCollector(registry=None),
        ):
            self.endpoint.registry.register(collector)

    def _new_stream(self) -> EventStream:
        if self._events_from_redis:
            return RedisEventStream(self._source, self.router.on_redis_payload)
        return KombuEventStream(self._source, self.router.on_message_body)

    def _purge_offline_workers(self) -> None:
        """Forgets workers silent for too long, on a schedule of its own, never a scrape's."""
        while not self.receiver.stopped.wait(PURGE_INTERVAL):
            for hostname in self.liveness.purge_offline():
                self.endpoint.store.forget_hostname(hostname)
                self.endpoint.recorder.forget_hostname(hostname)
                self.losses.forget(hostname)
                self.discovery.forget(hostname)
                logger.info("celery-prom: forgot offline worker %s", hostname)


def _bare_app(settings: ExporterSettings) -> Any:
    """A Celery app for remote control (queue discovery) when no app was given."""
    app = Celery("celery-prom", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=dict(settings.transport_options),
        broker_use_ssl=settings.broker_ssl,
        event_exchange=settings.event_exchange,
    )
    return app
