"""Routing events: every kind of malformed input is dropped with its reason."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from celery_prom.exporter.decoding import MAX_PAYLOAD_BYTES
from celery_prom.exporter.dropped import DroppedEvents
from celery_prom.exporter.liveness import WorkerLiveness
from celery_prom.exporter.losses import LossEstimator
from celery_prom.exporter.router import EventRouter
from celery_prom.recorder import Recorder, RecorderStats
from celery_prom.store import TaskStore
from tests.exporter_process import RawEvents, event, hostname, running_exporter_for
from tests.support import Broker


class KnownQueues:
    def __init__(self, queues: dict[str, str] | None = None) -> None:
        self.queues = queues or {}
        self.noticed: list[str] = []

    def notice(self, hostname: str) -> None:
        self.noticed.append(hostname)

    def queue_of(self, hostname: object) -> str | None:
        return self.queues.get(hostname) if isinstance(hostname, str) else None


def make_router(queues: KnownQueues | None = None) -> tuple[EventRouter, DroppedEvents, TaskStore]:
    store = TaskStore()
    recorder = Recorder(store)
    dropped = DroppedEvents(recorder)
    liveness = WorkerLiveness(30, 600)
    router = EventRouter(
        recorder, dropped, liveness, LossEstimator(dropped), queues or KnownQueues()
    )
    return router, dropped, store


def received_key(store: TaskStore, name: str, host: str, queue: str) -> int | None:
    snapshot = store.snapshot((name, host, queue))
    return None if snapshot is None else snapshot.counters[0]


def test_task_events_marked_by_an_instrumented_worker_are_skipped() -> None:
    router, dropped, store = make_router()
    router.route(event("task-received", "w@h", 1, 1.0, uuid="u", name="t", celery_prom=True))
    assert dropped.counts() == RecorderStats(1, {"recorded_by_worker": 1})
    assert store.versions() == []


def test_batches_are_routed_event_by_event() -> None:
    router, dropped, store = make_router()
    router.route(
        [
            event("task-received", "w@h", 1, 1.0, uuid="u", name="t"),
            7,
            {"no": "type"},
            event("task-bogus", "w@h", 2, 1.0, uuid="u"),
        ]
    )
    assert dropped.counts() == RecorderStats(4, {"malformed": 2, "unknown_type": 1})
    assert received_key(store, "t", "w@h", "celery") == 1


def test_task_received_gets_the_queue_of_a_single_queue_worker() -> None:
    router, _, store = make_router(KnownQueues({"w@h": "images"}))
    router.route(event("task-received", "w@h", 1, 1.0, uuid="u1", name="t"))
    router.route(event("task-received", "x@h", 1, 1.0, uuid="u2", name="t"))
    router.route(event("task-received", "w@h", 2, 1.0, uuid="u3", name="t", queue="own"))
    assert received_key(store, "t", "w@h", "images") == 1
    assert received_key(store, "t", "x@h", "celery") == 1
    assert received_key(store, "t", "w@h", "own") == 1


def test_worker_events_reach_liveness_and_ask_for_the_worker_queues() -> None:
    queues = KnownQueues()
    router, dropped, _ = make_router(queues)
    router.route(event("worker-heartbeat", "w@h", 1, 1.0, active=1, processed=2))
    router.route(event("worker-heartbeat", "w@h", 2, 1.0, active="x"))
    assert queues.noticed == ["w@h"]
    assert dropped.counts() == RecorderStats(2, {"invalid_field": 1})


def test_an_eta_in_kombu_json_encoding_is_understood() -> None:
    router, dropped, store = make_router()
    eta = {"__type__": "datetime", "__value__": "2030-01-01T00:00:00+00:00"}
    router.route(event("task-received", "w@h", 1, 1.0, uuid="u", name="t", eta=eta))
    assert dropped.counts().dropped == {}
    assert received_key(store, "t", "w@h", "celery") == 1


# -- malformed events end to end -------------------------------------------------------------


def task(host: str, clock: int, uuid: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        event("task-received", host, clock, 1.0, uuid=uuid, name="demo.ok", **fields),
        event("task-started", host, clock + 1, 2.0, uuid=uuid),
        event("task-succeeded", host, clock + 2, 3.0, uuid=uuid, runtime=0.5),
    ]


def malformed(host: str, canary: Path) -> tuple[list[tuple[bytes, str]], dict[str, int], int]:
    """Message bodies (with content types), the drops they must cause, and how many events
    the exporter receives from them."""

    class Canary:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (canary,))

    as_json = [
        42,
        "text",
        {"no": "type"},
        {"type": 7, "hostname": host},
        event("task-received", host, 1, 1.0, name="demo.x"),  # no uuid
        {"type": "task-received", "uuid": "u", "name": "demo.x"},  # no hostname
        event("task-received", host, 1, 1.0, uuid=123, name="demo.x"),
        event("task-received", host, 1, 1.0, uuid="u2", name=42),
        event("task-received", host, 1, 1.0, uuid="u3", name="x" * 10_000),
        event("task-received", host, 1, 1.0, uuid="u4", name="bad\ud800surrogate"),
        event(
            "task-received", host, 1, 1.0, uuid="u5", name="demo.x", sent_at=0.5, eta="not a date"
        ),
        event("task-started", host, 1, "soon", uuid="u6"),  # never received
        event("task-succeeded", host, 1, 1.0, uuid="never-received"),
        event("task-exploded", host, 1, 1.0, uuid="u7"),
        event("bogus", host, 1, 1.0),
        event("worker-heartbeat", host, 1, 1.0, active="many"),
        event("worker-heartbeat", "", 1, 1.0),
        [event("task-received", host, 1, 1.0), 5],  # a batch: no uuid, not an event
    ]
    bodies = [(json.dumps(item).encode(), "application/json") for item in as_json]
    bodies += [
        (b"{not json", "application/json"),
        (b"\xc3\x28\xff", "application/json"),
        (pickle.dumps(Canary()), "application/x-python-serialize"),
        (b"{}", "application/x-msgpack"),
        (
            b'{"type": "task-received", "name": "' + b"y" * (MAX_PAYLOAD_BYTES + 10) + b'"}',
            "application/json",
        ),
    ]
    drops = {
        "malformed": 10,
        "invalid_field": 5,
        "unknown_task": 2,
        "unknown_type": 2,
        "undecodable": 5,
    }
    return bodies, drops, len(as_json) + 1 + 5


@pytest.mark.slow
def test_malformed_events_are_dropped_and_later_events_counted_exactly(
    own_broker: Broker, tmp_path: Path
) -> None:
    broker = own_broker
    host = hostname()
    canary = tmp_path / "unpickled"
    bodies, drops, events_in_bodies = malformed(host, canary)
    with running_exporter_for(broker, tmp_path) as exporter:
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        raw = RawEvents(broker)
        for body, content_type in bodies:
            raw.body(body, content_type)
        good = [e for n in range(3) for e in task(host, 100 + 10 * n, f"ok-{n}")]
        raw.events(good)
        expected_received = events_in_bodies + len(good)
        if broker.kind == "redis":
            raw.payload(b"not an envelope")
            raw.payload(b"\xff" * 10)
            drops["undecodable"] += 2
            expected_received += 2
        # A scrape renders task series before the event counts, so wait for both.
        result = exporter.wait_for_scrape(
            lambda s: (
                s.value("celery_prom_events_received_total") == expected_received
                and s.total("celery_task_succeeded_total", hostname=host) == 3
            ),
            what=f"{expected_received} events",
        )
        raw.close()
    assert result.by_label("celery_prom_events_dropped_total", "reason") == drops
    labels = {"name": "demo.ok", "hostname": host, "queue_name": "celery"}
    assert [
        result.value(f"celery_task_{kind}_total", **labels)
        for kind in ("received", "started", "succeeded")
    ] == [3, 3, 3]
    assert result.total("celery_task_received_total", hostname=host) == 3
    assert not canary.exists()
