"""Producer hooks: stamp each task message with its publish time and count what was sent.

The publish time is what lets the worker measure queue wait; ``celery_task_sent_total``
goes into prometheus_client's default registry so that a web app's existing /metrics
shows the tasks it enqueued.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from celery_prom import metrics

#: Message header carrying the publish time (Unix seconds, float).
SENT_AT_HEADER = "celery_prom_sent_at"

_DISPATCH_UID = "celery_prom.producer"


@cache
def sent_counter(registry: CollectorRegistry = REGISTRY) -> Counter:
    """The ``celery_task_sent_total`` counter of ``registry``, created once per registry."""
    family = metrics.TASK_SENT
    return Counter(family.openmetrics_name, family.help, family.labels, registry=registry)


class ProducerHooks:
    """Signal receivers for one process; connecting them twice is a no-op."""

    def __init__(self, counter: Counter, clock: Any = time.time) -> None:
        self._counter = counter
        self._clock = clock

    def connect(self) -> None:
        signals.before_task_publish.connect(
            self.stamp_publish_time, weak=False, dispatch_uid=f"{_DISPATCH_UID}.stamp"
        )
        signals.after_task_publish.connect(
            self.count_sent, weak=False, dispatch_uid=f"{_DISPATCH_UID}.count"
        )

    def stamp_publish_time(self, headers: Any = None, **_: Any) -> None:
        if isinstance(headers, dict):
            headers[SENT_AT_HEADER] = self._clock()

    def count_sent(self, sender: Any = None, routing_key: Any = None, **_: Any) -> None:
        # Celery calls this with the task name as sender, and the routing key it used.
        name = sender if isinstance(sender, str) else "unknown"
        queue = routing_key if isinstance(routing_key, str) and routing_key else "celery"
        self._counter.labels(name, queue).inc()


def instrument_producers(registry: CollectorRegistry = REGISTRY) -> None:
    """Stamp and count every task this process publishes, from now on."""
    ProducerHooks(sent_counter(registry)).connect()
