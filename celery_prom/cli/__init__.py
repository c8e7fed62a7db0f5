"""Command line: ``celery-prom exporter``, ``demo`` and ``monitoring``; ``celery -A proj prom``."""
