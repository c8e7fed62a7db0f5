"""Celery bootsteps: ``PrometheusServer`` (worker) and ``TaskEventTap`` (consumer).

``celery_prom.install(app)`` adds both. Adding only ``PrometheusServer`` to
``app.steps['worker']`` works too: it adds the tap itself.
"""

from celery_prom.bootsteps.server import PrometheusServer, WorkerMetrics
from celery_prom.bootsteps.tap import EventTap, TaskEventTap

__all__ = ["EventTap", "PrometheusServer", "TaskEventTap", "WorkerMetrics"]
