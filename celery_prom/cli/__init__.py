"""Command line: ``celery-prom exporter`` and ``celery -A proj prom``."""
