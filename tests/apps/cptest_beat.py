"""The Celery app the beat tests run (imported by beat and worker subprocesses): the
``cptest_tasks`` app (broker, key prefix, queue and instrumentation from the environment)
with a schedule, also from the environment:

* ``CPTEST_BEAT_SCHEDULE``: JSON object of entry -> seconds between runs (a number) or the
  minute field of an hourly crontab (a string); every entry sends ``cptest_tasks.noop``;
* ``CPTEST_BEAT_SCHEDULER``: the scheduler class (Celery's ``PersistentScheduler`` unless
  given);
* ``CPTEST_REDBEAT_PREFIX``: RedBeat's key prefix, for RedBeat on the broker's Redis.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery.schedules import crontab
from cptest_tasks import app

__all__ = ["app"]


def entry(every: float | str) -> dict[str, Any]:
    schedule = every if isinstance(every, (int, float)) else crontab(minute=every)
    return {"task": "cptest_tasks.noop", "schedule": schedule}


app.conf.update(
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
