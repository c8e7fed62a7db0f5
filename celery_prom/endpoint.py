"""What one /metrics endpoint serves, assembled the same way for both feeds.

A task store, the recorder counting into it, the incremental rendering of its series, and a
registry for every other family. The worker (``bootsteps.server``) and the exporter
(``exporter.service``) each build one, register their own collectors in its registry, and
serve its ``render``; its ``health`` adds whether the last render worked to their own checks.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from celery_prom.exposition import TaskExposition
from celery_prom.faults import describe_error
from celery_prom.http import HealthReport
from celery_prom.metrics import LabelLimits
from celery_prom.recorder import Recorder
from celery_prom.store import TaskStore

OPENMETRICS = "application/openmetrics-text"


class RecordingSettings(Protocol):
    """The settings that shape the task series (``config.recording_settings``)."""

    @property
    def runtime_buckets(self) -> tuple[float, ...]: ...

    @property
    def queue_wait_buckets(self) -> tuple[float, ...]: ...

    @property
    def limits(self) -> LabelLimits: ...


class MetricsEndpoint:
    """The task store, its recorder and the registry of everything else one endpoint serves."""

    def __init__(self, settings: RecordingSettings) -> None:
        self.store = TaskStore(
            settings.runtime_buckets, settings.queue_wait_buckets, settings.limits
        )
        self.recorder = Recorder(self.store)
        self.registry = CollectorRegistry(auto_describe=False)
        self._tasks = TaskExposition(self.store)
        self._render_error: str | None = None

    def render(self, accept: str) -> tuple[bytes, str]:
        """The page for a scraper's ``Accept`` header, and its content type.

        prometheus_client picks the format and encodes the registry; the task series are
        written in the same format. It may pick the text format 0.0.4 or 1.0.0, or
        OpenMetrics 1.0.0 or later, each with a name-escaping scheme: every name and label
        name celery-prom writes is a plain legacy one, which no scheme changes, and those
        versions write counters and classic histograms alike.
        """
        encode, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith(OPENMETRICS)
        try:
            body = self._tasks.render(openmetrics, rest=functools.partial(encode, self.registry))
        except Exception as error:
            self._render_error = describe_error(error)
            raise
        self._render_error = None
        return body, content_type

    def health(self, healthy: bool, checks: Mapping[str, Any]) -> HealthReport:
        """A feed's own checks, and whether the last render worked; renders nothing."""
        error = self._render_error
        return HealthReport(healthy and error is None, {**checks, "metrics": error or "ok"})
