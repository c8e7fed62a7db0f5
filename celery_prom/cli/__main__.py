"""``python -m celery_prom.cli``: the ``celery-prom`` command."""

from celery_prom.cli.main import main

main()
