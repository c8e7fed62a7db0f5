"""The Celery app the beat tests run (imported by beat and worker subprocesses).

Configured from the environment like ``cptest_tasks`` (broker, key prefix, queue), plus:

* ``CPTEST_BEAT_SCHEDULE``: JSON object of entry -> seconds between runs (a number) or the
  minute field of an hourly crontab (a string); every entry sends ``cptest_beat.noop``;
* ``CPTEST_BEAT_SCHEDULER``: the scheduler class (Celery's ``PersistentScheduler`` unless
  given);
* ``CPTEST_REDBEAT_PREFIX``: RedBeat's key prefix, for RedBeat on the broker's Redis.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery
from celery.schedules import crontab

import celery_prom


def entry(every: float | str) -> dict[str, Any]:
    schedule = every if isinstance(every, (int, float)) else crontab(minute=every)
    return {"task": "cptest_beat.noop", "schedule": schedule}


app = Celery("cptest_beat")
app.conf.update(
    broker_url=os.environ.get("CPTEST_BROKER_URL", "memory://"),
    broker_transport_options=json.loads(os.environ.get("CPTEST_TRANSPORT_OPTIONS", "{}")),
    task_default_queue=os.environ.get("CPTEST_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    timezone="UTC",
    # No result-cleanup entry in the schedule: the tests count its entries.
    result_expires=None,
    # A RedBeat instance that waits for the lock tries again every second.
    beat_max_loop_interval=1,
    beat_scheduler=os.environ.get("CPTEST_BEAT_SCHEDULER", "celery.beat:PersistentScheduler"),
    beat_schedule={
        name: entry(every)
        for name, every in json.loads(os.environ.get("CPTEST_BEAT_SCHEDULE", "{}")).items()
    },
)
if "CPTEST_REDBEAT_PREFIX" in os.environ:
    app.conf.update(
        redbeat_redis_url=app.conf.broker_url,
        redbeat_key_prefix=os.environ["CPTEST_REDBEAT_PREFIX"],
        redbeat_redis_options={},
    )
celery_prom.install(app)


@app.task
def noop() -> None:
    return None
