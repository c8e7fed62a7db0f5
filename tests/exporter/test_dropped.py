"""Events dropped before the recorder, or never received, counted beside the recorder's own."""

from __future__ import annotations

import base64
import json
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from celery_prom.exporter.dropped import DroppedEvents
from celery_prom.exporter.liveness import Clock, WorkerLiveness
from celery_prom.exporter.losses import LossEstimator
from celery_prom.exporter.router import EventRouter
from celery_prom.recorder import Recorder, RecorderStats
from celery_prom.store import TaskStore
from celery_prom.task_event import TaskEvent


class StoppedClock(Clock):
    def __init__(self) -> None:
        self.now = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class NoQueues:
    def notice(self, hostname: str) -> None:
        pass

    def queue_of(self, hostname: object) -> str | None:
        return None


def event(type_: str, host: str, clock: int, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "hostname": host, "clock": clock, "timestamp": 1.0, **fields}


def envelope(body: dict[str, Any]) -> bytes:
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(
        {
            "body": encoded,
            "content-type": "application/json",
            "properties": {"body_encoding": "base64"},
        }
    ).encode()


#: What the recorder served for these families, alone, before the exporter's own drops were
#: counted apart from it: the same names, help, order and values.
EXPECTED = """\
# HELP celery_prom_events_received_total Celery events handed to the recorder.
# TYPE celery_prom_events_received_total counter
celery_prom_events_received_total 21.0
# HELP celery_prom_events_dropped_total Celery events the recorder could not use, by reason.
# TYPE celery_prom_events_dropped_total counter
celery_prom_events_dropped_total{reason="invalid_field"} 1.0
celery_prom_events_dropped_total{reason="lost"} 9.0
celery_prom_events_dropped_total{reason="malformed"} 3.0
celery_prom_events_dropped_total{reason="offline_worker"} 2.0
celery_prom_events_dropped_total{reason="recorded_by_worker"} 1.0
celery_prom_events_dropped_total{reason="too_many_workers"} 1.0
celery_prom_events_dropped_total{reason="undecodable"} 2.0
celery_prom_events_dropped_total{reason="unknown_task"} 1.0
celery_prom_events_dropped_total{reason="unknown_type"} 2.0
"""


def test_the_event_families_count_every_drop_once_whoever_dropped_it() -> None:
    clock = StoppedClock()
    recorder = Recorder(TaskStore())
    dropped = DroppedEvents(recorder)
    liveness = WorkerLiveness(30, 600, clock, max_workers=3)
    losses = LossEstimator(dropped)
    router = EventRouter(recorder, dropped, liveness, losses, NoQueues())

    losses.new_connection()
    router.on_redis_payload(b"not json")
    router.on_redis_payload(envelope(event("task-received", "w@h", 1, uuid="a", name="t")))
    router.on_message_body(b"{}", "application/x-python-serialize")
    router.route([7, {"type": 5}, event("task-received", "w@h", 2, uuid="m", celery_prom=True)])
    router.route(event("task-bogus", "w@h", 3, uuid="a"))  # no task event type
    router.route(event("bogus", "w@h", 4))  # no event type at all
    router.route(event("task-started", "w@h", 5, uuid="a"))
    router.route(event("task-succeeded", "w@h", 6, uuid="a", runtime=0.1))
    router.route(event("task-succeeded", "w@h", 7, uuid="never-received"))
    router.route(event("worker-heartbeat", "w@h", 8, active=1))
    router.route(event("worker-heartbeat", "w@h", 9, active="x"))
    router.route(event("worker-heartbeat", "", 1))
    for host in ("old@h", "v@h", "x@h"):  # the third is past the cap of three workers
        router.route(event("worker-heartbeat", host, 1))
    clock.now += 601
    router.route(event("worker-heartbeat", "w@h", 10))
    assert liveness.purge_offline() == ["old@h", "v@h"]
    router.route(event("task-received", "old@h", 2, uuid="late", name="t"))
    router.route(event("worker-heartbeat", "old@h", 3))
    losses.new_connection()
    router.route(event("worker-heartbeat", "w@h", 20))  # 11 to 19 never arrived

    registry = CollectorRegistry(auto_describe=False)
    registry.register(dropped)
    assert generate_latest(registry).decode() == EXPECTED


def test_the_recorder_keeps_counting_its_own_drops() -> None:
    recorder = Recorder(TaskStore())
    dropped = DroppedEvents(recorder)
    recorder.record(TaskEvent("task-started", "u", "w@h"))
    dropped.drop("undecodable")
    dropped.received()
    dropped.lost(4)

    assert recorder.counts() == RecorderStats(1, {"unknown_task": 1})
    assert dropped.counts() == RecorderStats(3, {"unknown_task": 1, "undecodable": 1, "lost": 4})
