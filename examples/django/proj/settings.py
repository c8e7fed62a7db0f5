"""Settings of the example: an orders API that hands its work to Celery workers.

Deployment-specific values come from the environment; the defaults run everything on one
machine against the local Redis.
"""

from __future__ import annotations

import json
import os

from kombu import Queue

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-key-for-the-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = ["orders"]
MIDDLEWARE = [
    # First, so that its timing and status include everything the other layers do.
    "proj.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"
# Orders go straight to the task queue: no database, so the example stays about metrics.
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# JSON, e.g. {"global_keyprefix": "orders:"} to share one Redis database between apps.
CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(
    os.environ.get("CELERY_BROKER_TRANSPORT_OPTIONS", "{}")
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Payments and e-mails have workers of their own, so a slow payment gateway never delays
# the e-mails. Declared here so that workers and the exporter know both queues.
CELERY_TASK_QUEUES = [
    Queue("payments", routing_key="payments"),
    Queue("emails", routing_key="emails"),
]
CELERY_TASK_ROUTES = {
    "orders.tasks.charge_payment": {"queue": "payments"},
    "orders.tasks.send_order_received": {"queue": "emails"},
}
