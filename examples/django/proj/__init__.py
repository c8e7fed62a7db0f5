"""The example project. Importing it loads the Celery app, so that Django's processes (the
web server, ``manage.py`` commands) publish through an app on which ``celery_prom.install``
has run."""

from __future__ import annotations

from proj.celery import app as celery_app

__all__ = ["celery_app"]
