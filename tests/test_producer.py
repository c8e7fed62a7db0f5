"""Producer hooks: publish-time header and celery_task_sent_total, on real publishes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client import REGISTRY, CollectorRegistry

from celery_prom.producer import SENT_AT_HEADER, ProducerHooks, sent_counter
from tests.support import REDIS_DB, REDIS_HOST, REDIS_PORT, Broker, unique


def test_sent_tasks_are_counted_and_stamped_with_their_publish_time(
    redis_broker: Broker, client_app_for: Callable[..., Any]
) -> None:
    queue = unique("q")
    app = client_app_for(redis_broker, queue)

    before = time.time()
    for _ in range(3):
        app.send_task("cptest_tasks.noop")
    app.send_task("cptest_tasks.fail", args=["ValueError"])
    after = time.time()

    sent = {
        name: REGISTRY.get_sample_value(
            "celery_task_sent_total", {"name": name, "queue_name": queue}
        )
        for name in ("cptest_tasks.noop", "cptest_tasks.fail")
    }
    assert sent == {"cptest_tasks.noop": 3.0, "cptest_tasks.fail": 1.0}
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    key = redis_broker.transport_options["global_keyprefix"] + queue
    messages = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    client.delete(key)
    stamps = [message["headers"][SENT_AT_HEADER] for message in messages]
    assert len(stamps) == 4
    assert all(before <= stamp <= after for stamp in stamps)


def test_hooks_ignore_what_they_cannot_use() -> None:
    registry = CollectorRegistry()
    hooks = ProducerHooks(sent_counter(registry), clock=lambda: 42.0)

    hooks.stamp_publish_time(headers=None)
    headers: dict[str, Any] = {}
    hooks.stamp_publish_time(headers=headers)
    hooks.count_sent(sender=None, routing_key=None)

    assert headers == {SENT_AT_HEADER: 42.0}
    assert (
        registry.get_sample_value(
            "celery_task_sent_total", {"name": "unknown", "queue_name": "celery"}
        )
        == 1.0
    )


def test_one_counter_per_registry() -> None:
    registry = CollectorRegistry()

    assert sent_counter(registry) is sent_counter(registry)
