"""The project's Celery app, configured from Django's settings (keys prefixed ``CELERY_``).

``celery_prom.install(app)`` is the one line celery-prom asks for. In workers it adds the
step that counts every task from inside the worker and serves the counts on :9808/metrics;
in the web processes it stamps each task message with its publish time (for queue wait) and
counts ``celery_task_sent_total``, which /api/v1/metrics then serves next to the HTTP metrics.
"""

from __future__ import annotations

import os

from celery import Celery

import celery_prom

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
celery_prom.install(app)
