"""Names the demo's processes share: its queues and the variables the runner sets.

Kept apart from ``demo.app`` so the runner can use them without creating the demo app.
"""

#: Environment variables the runner sets for the worker and exporter it starts.
BROKER_ENV = "CELERY_PROM_DEMO_BROKER"
TRANSPORT_OPTIONS_ENV = "CELERY_PROM_DEMO_TRANSPORT_OPTIONS"

DEFAULT_QUEUE = "celery-prom-demo"
REPORTS_QUEUE = "celery-prom-demo-reports"
