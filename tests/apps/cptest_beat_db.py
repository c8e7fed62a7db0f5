"""Django settings for django-celery-beat's schedule in SQLite (``CPTEST_DB``), and the
commands the tests change that schedule with while beat runs::

    python -m cptest_beat_db migrate
    python -m cptest_beat_db put ENTRY SECONDS   # add the entry, or change its interval
"""

from __future__ import annotations

import os
import sys

SECRET_KEY = "cptest"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["CPTEST_DB"]}}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def put(entry: str, seconds: int) -> None:
    """Through the ORM, whose signals tell a running DatabaseScheduler what changed."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask  # noqa: PLC0415

    every, _ = IntervalSchedule.objects.get_or_create(
        every=seconds, period=IntervalSchedule.SECONDS
    )
    PeriodicTask.objects.update_or_create(
        name=entry, defaults={"task": "cptest_tasks.noop", "interval": every}
    )


if __name__ == "__main__":
    import django
    from django.core.management import call_command

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cptest_beat_db")
    django.setup()
    command, *arguments = sys.argv[1:]
    if command == "migrate":
        call_command("migrate", verbosity=0)
    else:
        put(arguments[0], int(arguments[1]))
