"""The demo's Celery app: a small shop whose tasks succeed, fail, retry and take their time.

Worker and exporter subprocesses import it (``celery -A celery_prom.demo.app``); it reads
its broker from the environment the demo runner sets.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from celery import Celery
from kombu.entity import Queue

import celery_prom
from celery_prom.demo.names import BROKER_ENV, DEFAULT_QUEUE, REPORTS_QUEUE, TRANSPORT_OPTIONS_ENV


class OutOfStock(Exception):
    """The shop ran out of what was ordered."""


class PaymentDeclined(Exception):
    """The card was refused."""


class GatewayTimeout(Exception):
    """The payment provider did not answer in time (retried)."""


app = Celery("celery_prom_demo")
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV, "memory://"),
    broker_transport_options=json.loads(os.environ.get(TRANSPORT_OPTIONS_ENV, "{}")),
    broker_connection_retry_on_startup=True,
    task_queues=[
        Queue(DEFAULT_QUEUE, routing_key=DEFAULT_QUEUE, queue_arguments={"x-max-priority": 9}),
        Queue(REPORTS_QUEUE, routing_key=REPORTS_QUEUE),
    ],
    task_default_queue=DEFAULT_QUEUE,
    task_routes={"demo.build_report": {"queue": REPORTS_QUEUE}},
    worker_prefetch_multiplier=1,
    # The worker's embedded beat (-B) sends the shop's periodic report, sped up.
    beat_schedule={"hourly-report": {"task": "demo.build_report", "schedule": 10.0}},
)
celery_prom.install(app)


@app.task(name="demo.checkout")
def checkout(order_id: int) -> str:
    time.sleep(random.uniform(0.01, 0.05))
    if random.random() < 0.05:
        raise OutOfStock(f"order {order_id}")
    return f"order {order_id} reserved"


@app.task(name="demo.charge_card", bind=True, max_retries=3)
def charge_card(self: Any, order_id: int) -> str:
    time.sleep(random.uniform(0.02, 0.1))
    if self.request.retries == 0 and random.random() < 0.2:
        raise self.retry(exc=GatewayTimeout(f"order {order_id}"), countdown=1)
    if random.random() < 0.05:
        raise PaymentDeclined(f"order {order_id}")
    return f"order {order_id} charged"


@app.task(name="demo.send_email")
def send_email(order_id: int) -> str:
    time.sleep(random.uniform(0.2, 0.8))
    return f"order {order_id} confirmed"


@app.task(name="demo.build_report")
def build_report() -> str:
    time.sleep(random.uniform(1.0, 3.0))
    return "report ready"
