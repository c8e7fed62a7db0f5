"""Prometheus metrics for Celery.

``celery_prom.install(app)`` adds the worker step that counts every task from inside the
worker and serves the numbers on :9808/metrics; ``celery-prom exporter`` watches the broker.
"""

from __future__ import annotations

__version__ = "0.1.0"

from celery_prom.install import install  # needs __version__ defined first

__all__ = ["__version__", "install"]
