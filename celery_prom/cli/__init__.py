"""Command line: ``celery-prom exporter`` and ``demo``, and ``celery -A proj prom``."""
