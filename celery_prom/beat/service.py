"""``celery beat`` with ``install(app)``: the scheduler's hook and beat's own endpoint.

Beat has no bootsteps: ``celery.beat.Service.start`` sends ``beat_init`` (in the beat
process, with the service as sender) once the scheduler exists and before its first tick.
The receiver hooks the scheduler there and serves ``/metrics`` and ``/health`` like a
worker; a worker's embedded beat (``-B``) is handed to ``embedded`` instead. Checked against
Celery 5.3 to 5.7.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import click
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from celery_prom import faults
from celery_prom.beat import embedded
from celery_prom.beat.collector import BeatCollector
from celery_prom.beat.hook import BeatFeed, watch
from celery_prom.config import ConfigError, OptionError, WorkerSettings, worker_endpoint_settings
from celery_prom.faults import ContainedCollector, Faults
from celery_prom.http import Endpoint, HealthReport, serve_first_free
from celery_prom.webconfig import WebConfigFile

logger = logging.getLogger(__name__)


def on_beat_init(sender: Any, **_: Any) -> None:
    """``beat_init`` receiver: instrument the beat that is starting."""
    if embedded.is_embedded(sender):
        # Celery would log what this raises and go on; so does celery-prom, but only once.
        with Faults().contained(faults.STARTUP):
            embedded.write_snapshots(sender)
        return
    serve(sender)


class BeatEndpoint:
    """What a beat's endpoint serves: beat's families, the process's default registry
    (process metrics, ``celery_task_sent_total`` of what beat published, the user's own
    metrics) and celery-prom's errors."""

    def __init__(self, feed: BeatFeed | None, faults: Faults) -> None:
        self._feed = feed
        self._faults = faults
        self._registry = CollectorRegistry(auto_describe=False)
        if feed is not None:
            self._registry.register(ContainedCollector(BeatCollector(feed.snapshot), faults))
        self._registry.register(ContainedCollector(REGISTRY, faults))
        self._registry.register(faults)

    def render(self, accept: str) -> tuple[bytes, str]:
        """The page in the format prometheus_client picks for the scraper's ``Accept``."""
        encode, content_type = choose_encoder(accept)
        return encode(self._registry), content_type

    def health(self) -> HealthReport:
        errors = self._faults.reasons()
        checks: dict[str, Any] = {}
        if self._feed is None:
            checks["scheduler"] = f"not watched: {errors.get(faults.STARTUP)}"
        else:
            checks["scheduler"] = self._feed.scheduler
        if errors:
            checks["errors"] = errors
        # Without the hook beat runs unmonitored: its send counts would be false zeros.
        return HealthReport(self._feed is not None, checks)


def serve(service: Any) -> None:
    """Hook the scheduler of a standalone beat and serve its endpoint, as configured.

    A bad option or a busy port stops beat before it sends anything, with one line.
    """
    settings, web_config = _configured(service.app)
    if not settings.enabled:
        return
    recorded = Faults()
    feed: BeatFeed | None = None
    with recorded.contained(faults.STARTUP):
        feed = watch(service.scheduler, recorded)
    endpoint = BeatEndpoint(feed, recorded)
    try:
        server = serve_first_free(
            settings.host,
            settings.ports,
            Endpoint("celery-prom: celery beat", endpoint.render, endpoint.health),
            web_config,
        )
    except OSError as exc:
        _exit(click.ClickException(f"celery-prom: {exc.strerror}"))
    server.start()
    logger.info("celery-prom: serving http://%s:%s/metrics", server.host, server.port)


def _configured(app: Any) -> tuple[WorkerSettings, WebConfigFile | None]:
    try:
        settings = WorkerSettings.resolve(app, _command_line())
        if settings.web_config is None or not settings.enabled:
            return settings, None
        return settings, WebConfigFile(settings.web_config)
    except ConfigError as exc:
        _exit(OptionError(f"celery-prom: {exc}"))


def _command_line() -> Mapping[str, Any]:
    # Celery hands the beat command's options, --prom-* included, to Beat(**kwargs), which
    # drops those it does not know (Celery 5.3 to 5.7). beat_init is sent while the command
    # runs, so they are read from its click context instead, where click has checked them;
    # there is none when beat runs from code.
    context = click.get_current_context(silent=True)
    params = {} if context is None else context.params
    return {setting.name: params.get(setting.name) for setting in worker_endpoint_settings()}


def _exit(error: click.ClickException) -> NoReturn:
    # A beat_init receiver cannot stop beat by raising (Celery logs and drops what receivers
    # raise), except with SystemExit. By now beat has redirected stderr into its log, so the
    # one line goes to the real stderr.
    error.show(file=sys.__stderr__)
    raise SystemExit(error.exit_code)
