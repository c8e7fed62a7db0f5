"""Prometheus metrics for Celery.

``celery_prom.install(app)`` adds the worker step that counts every task from inside the
worker and serves the numbers on :9808/metrics; ``celery-prom exporter`` watches the broker.

Every ``celery`` command imports this package, to load the ``celery prom`` entry point,
before it loads the user's app. So importing the package, its command line or the entry
point creates no app, connects no signal and imports no prometheus_client (which decides at
import, from the environment as it is then, whether it runs in multiprocess mode); the
modules that do any of that are imported where they are used.
"""

from __future__ import annotations

from celery_prom.install import install

__version__ = "0.1.0"

__all__ = ["__version__", "install"]
