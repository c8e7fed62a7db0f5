"""What one /metrics endpoint serves, assembled the same way for both feeds.

A task store, the recorder counting into it, the incremental rendering of its series, and a
registry for every other family. The worker (``bootsteps.server``) and the exporter
(``exporter.service``) each build one, register their own collectors in its registry, and
serve its ``render``; its ``health`` adds whether the last render worked to their own checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from celery_prom.exposition import TaskExposition, render_registry
from celery_prom.faults import describe_error
from celery_prom.http import HealthReport
from celery_prom.recorder import Recorder
from celery_prom.store import LabelLimits, TaskStore


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

    def render(self, openmetrics: bool) -> str:
        """The whole page: the task series, then the registry's families."""
        try:
            text = self._tasks.render(openmetrics) + render_registry(self.registry, openmetrics)
        except Exception as error:
            self._render_error = describe_error(error)
            raise
        self._render_error = None
        return text

    def health(self, healthy: bool, checks: Mapping[str, Any]) -> HealthReport:
        """A feed's own checks, and whether the last render worked; renders nothing."""
        error = self._render_error
        return HealthReport(healthy and error is None, {**checks, "metrics": error or "ok"})
