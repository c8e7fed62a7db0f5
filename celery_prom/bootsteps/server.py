"""The worker step that owns the worker's metrics and serves them over HTTP."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import click
from celery import bootsteps, signals
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
)
from prometheus_client.metrics_core import Metric

from celery_prom import faults
from celery_prom.bootsteps.advertise import HeartbeatAddress, advertised_address
from celery_prom.bootsteps.pool_processes import PoolProcesses
from celery_prom.bootsteps.tap import METRICS_ATTRIBUTE, TaskEventTap
from celery_prom.bootsteps.worker_state import MessageTally, WorkerStateCollector
from celery_prom.config import ConfigError, OptionError, WorkerSettings
from celery_prom.endpoint import MetricsEndpoint
from celery_prom.endpoint_extras import EndpointExtras, offer
from celery_prom.faults import ContainedCollector, Faults
from celery_prom.http import Endpoint, HealthReport, MetricsServer, serve_first_free
from celery_prom.multiprocess import (
    MultiprocessMetrics,
    SetupError,
    configured_directory,
    prometheus_client_is_multiprocess,
)
from celery_prom.store import LabelOverflowCollector
from celery_prom.webconfig import WebConfigFile

logger = logging.getLogger(__name__)

#: Keyword arguments of the worker's command-line options (see ``celery_prom.install``).
CLI_OPTIONS = ("prom_port", "prom_host", "prom_advertise", "prom_web_config")


class UserMetrics(Protocol):
    """The endpoint's metrics that are not celery-prom's own task and worker families:
    process metrics, producer counts and whatever the user defined with prometheus_client.

    A protocol of its own: prometheus-client's ``Collector`` is one only from 0.24 on."""

    def collect(self) -> Iterable[Metric]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class RegistryBridge:
    """Serves another registry's collectors (the process and user metrics) as one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()

    def start(self) -> None:
        """Nothing runs in the background: the registry is read at scrape time."""

    def stop(self) -> None:
        """Nothing to release."""


def user_metrics_for(env: Mapping[str, str], faults: Faults) -> UserMetrics:
    """The default registry; in multiprocess mode, the aggregated multiprocess directory.

    In multiprocess mode the default registry's metrics are only the main process's share
    (pool children run the tasks), so the directory replaces it; see ``multiprocess``.
    """
    try:
        directory = configured_directory(env, prometheus_client_is_multiprocess())
        if directory is None:
            return RegistryBridge(REGISTRY)
        return MultiprocessMetrics.claim(
            directory, (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR), faults
        )
    except SetupError as exc:
        raise OptionError(f"celery-prom: {exc}") from None


class WorkerMetrics:
    """Everything one worker's endpoint serves; the tap step records into it."""

    def __init__(
        self,
        worker: Any,
        hostname: str,
        settings: WorkerSettings,
        user_metrics: UserMetrics,
        faults: Faults,
    ) -> None:
        self.faults = faults
        self.endpoint = MetricsEndpoint(settings)
        self.recorder = self.endpoint.recorder
        self.invalid_messages = MessageTally()
        self.pool_processes = PoolProcesses(worker, hostname, faults)
        #: What parts beside the worker's steps serve here (an embedded beat's metrics).
        self.extras = EndpointExtras(faults)
        for collector in (
            WorkerStateCollector(worker, hostname, self.invalid_messages),
            self.pool_processes,
            self.recorder,
            LabelOverflowCollector(self.endpoint.store),
            user_metrics,
            self.extras,
        ):
            self.endpoint.registry.register(ContainedCollector(collector, faults))
        self.endpoint.registry.register(faults)

    def render(self, accept: str) -> tuple[bytes, str]:
        try:
            return self.endpoint.render(accept)
        except Exception as error:
            self.faults.record(faults.SCRAPE, error)
            raise

    def health(self) -> HealthReport:
        errors = self.faults.reasons()
        tap_error = errors.get(faults.TAP_INSTALL)
        checks: dict[str, Any] = {
            "tap": "installed" if tap_error is None else f"not installed: {tap_error}",
        }
        if errors:
            checks["errors"] = errors
        # Without the tap the worker runs unmonitored: its task counts would be false zeros.
        return self.endpoint.health(tap_error is None, checks)


def worker_settings(app: Any, cli: Mapping[str, Any]) -> WorkerSettings:
    """The worker's settings, or a one-line usage error naming the bad value's source."""
    try:
        return WorkerSettings.resolve(app, cli)
    except ConfigError as exc:
        raise OptionError(f"celery-prom: {exc}") from None


class PrometheusServer(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker step: serves /metrics and /health from the worker's main process.

    It binds its port when the worker is created, so a busy port stops the worker before
    it consumes anything, and starts answering once the pool is up. While it serves, the
    worker's heartbeats carry the address to scrape it at.
    """

    label = "celery-prom"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, **kwargs: Any) -> None:
        cli = {name: kwargs.get(name) for name in CLI_OPTIONS}
        settings = worker_settings(w.app, cli)
        self.enabled = settings.enabled
        self.faults = Faults()
        self.server: MetricsServer | None = None
        self.heartbeat_address: HeartbeatAddress | None = None
        self.user_metrics: UserMetrics | None = None
        self.pool_processes: PoolProcesses | None = None
        self._main_pid = os.getpid()
        if self.enabled:
            try:
                self._set_up(w, settings)
            except click.ClickException:
                raise  # the user's configuration, refused before the worker runs
            except Exception as error:  # noqa: BLE001 - never the reason a worker stops
                self.faults.record(faults.STARTUP, error)
                logger.error("celery-prom: this worker runs without metrics")
                self._release()
                self.enabled = False
        super().__init__(w, **kwargs)

    def _set_up(self, w: Any, settings: WorkerSettings) -> None:
        web_config = _web_config(settings)
        # Before the pool forks: in multiprocess mode this wipes the directory.
        self.user_metrics = user_metrics_for(os.environ, self.faults)
        worker_metrics = WorkerMetrics(w, w.hostname, settings, self.user_metrics, self.faults)
        setattr(w, METRICS_ATTRIBUTE, worker_metrics)
        self.pool_processes = worker_metrics.pool_processes
        self.pool_processes.connect()  # before the Pool step creates the pool's children
        offer(w, worker_metrics.extras)
        w.app.steps["consumer"].add(TaskEventTap)
        self.server = _bind(
            settings,
            web_config,
            Endpoint(
                title=f"celery-prom: {w.hostname}",
                render_metrics=worker_metrics.render,
                check_health=worker_metrics.health,
            ),
        )
        self.heartbeat_address = HeartbeatAddress(
            advertised_address(settings, self.server.port), self.faults
        )
        signals.worker_process_init.connect(self._close_inherited_socket, weak=False)

    def start(self, w: Any) -> None:
        with self.faults.contained(faults.STARTUP):
            if self.user_metrics is not None:
                self.user_metrics.start()
            if self.server is not None:
                self.server.start()
                logger.info(
                    "celery-prom: serving http://%s:%s/metrics",
                    self.server.host,
                    self.server.port,
                )
            if self.heartbeat_address is not None:
                self.heartbeat_address.start()

    def stop(self, w: Any) -> None:
        with self.faults.contained(faults.STARTUP):
            self._release()

    def _release(self) -> None:
        signals.worker_process_init.disconnect(self._close_inherited_socket)
        if self.pool_processes is not None:
            self.pool_processes.disconnect()
        server, self.server = self.server, None
        user_metrics, self.user_metrics = self.user_metrics, None
        heartbeat_address, self.heartbeat_address = self.heartbeat_address, None
        if heartbeat_address is not None:
            heartbeat_address.stop()
        if server is not None:
            server.stop()
        if user_metrics is not None:
            user_metrics.stop()

    def terminate(self, w: Any) -> None:
        self.stop(w)

    def shutdown(self, w: Any) -> None:
        self.stop(w)

    def _close_inherited_socket(self, **_: Any) -> None:
        # Pool children are forked with the listening socket; only the main process serves,
        # and a child must not keep the port bound after the worker is gone. The solo pool
        # sends this signal in the main process itself.
        if self.server is not None and os.getpid() != self._main_pid:
            self.server.close_socket()


def _web_config(settings: WorkerSettings) -> WebConfigFile | None:
    if settings.web_config is None:
        return None
    try:
        return WebConfigFile(settings.web_config)
    except ConfigError as exc:
        raise OptionError(f"celery-prom: {exc}") from None


def _bind(
    settings: WorkerSettings, web_config: WebConfigFile | None, endpoint: Endpoint
) -> MetricsServer:
    try:
        return serve_first_free(settings.host, settings.ports, endpoint, web_config)
    except OSError as exc:
        raise click.ClickException(f"celery-prom: {exc.strerror}") from None
