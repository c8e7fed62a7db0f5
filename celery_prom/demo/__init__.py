"""``celery-prom demo``: a live shop, its worker and the exporter, on an embedded broker."""
