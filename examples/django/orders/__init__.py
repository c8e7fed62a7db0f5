"""Orders: a JSON API that accepts orders and leaves the work to Celery tasks."""
