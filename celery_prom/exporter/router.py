"""Routing decoded events: task events to the recorder, worker events to liveness.

Both event streams hand raw payloads to ``EventRouter``, which decodes them (``decoding``),
splits ``task.multi`` batches, and routes each event: task events to the recorder, as a
``TaskEvent`` (unless the worker already counted them itself), worker events to the liveness
tracker. Anything unusable is counted as dropped with its reason.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery_prom.exporter.decoding import Undecodable, decode_body, decode_kombu_envelope
from celery_prom.exporter.dropped import (
    DROP_OFFLINE_WORKER,
    DROP_RECORDED_BY_WORKER,
    DROP_UNDECODABLE,
    DroppedEvents,
)
from celery_prom.exporter.liveness import WORKER_EVENTS, WorkerLiveness
from celery_prom.exporter.losses import LossEstimator
from celery_prom.recorder import Recorder
from celery_prom.task_event import (
    DEFAULT_QUEUE,
    DROP_MALFORMED,
    DROP_UNKNOWN_TYPE,
    RECORDED_MARK,
    InvalidEvent,
    parse_task_event,
)


class WorkerQueues(Protocol):
    """Which queue a worker's tasks come from, where that can be known."""

    def notice(self, hostname: str) -> None: ...

    def queue_of(self, hostname: object) -> str | None: ...


class EventRouter:
    """Sends each decoded event where it belongs; never raises on bad input."""

    def __init__(
        self,
        recorder: Recorder,
        dropped: DroppedEvents,
        liveness: WorkerLiveness,
        losses: LossEstimator,
        queues: WorkerQueues,
    ) -> None:
        self._recorder = recorder
        self._dropped = dropped
        self._liveness = liveness
        self._losses = losses
        self._queues = queues

    def on_redis_payload(self, payload: bytes) -> None:
        try:
            body = decode_kombu_envelope(payload)
        except Undecodable:
            self._dropped.drop(DROP_UNDECODABLE)
            return
        self.route(body)

    def on_message_body(self, body: object, content_type: object) -> None:
        try:
            decoded = decode_body(body, content_type)
        except Undecodable:
            self._dropped.drop(DROP_UNDECODABLE)
            return
        self.route(decoded)

    def route(self, body: object) -> None:
        """One event, or a ``task.multi`` batch of them."""
        if isinstance(body, list):
            for event in body:
                self._route_one(event)
        else:
            self._route_one(body)

    def _route_one(self, event: object) -> None:
        if not isinstance(event, dict):
            self._dropped.drop(DROP_MALFORMED)
            return
        event_type = event.get("type")
        if not isinstance(event_type, str):
            self._dropped.drop(DROP_MALFORMED)
            return
        hostname = event.get("hostname")
        self._losses.observe(hostname, event.get("clock"))
        if event_type.startswith("task-"):
            if event.get(RECORDED_MARK):
                self._dropped.drop(DROP_RECORDED_BY_WORKER)
            elif not self._liveness.accepts(hostname):
                self._dropped.drop(DROP_OFFLINE_WORKER)
            else:
                self._record(event, event_type, hostname)
        elif event_type in WORKER_EVENTS:
            reason = self._liveness.observe(event)
            if reason is None:
                self._queues.notice(event["hostname"])
                self._dropped.received()
            else:
                self._dropped.drop(reason)
        else:
            self._dropped.drop(DROP_UNKNOWN_TYPE)

    def _record(self, event: dict[str, Any], event_type: str, hostname: object) -> None:
        # Celery's task-received names no queue (the worker tap adds it): a worker that
        # consumes one queue only can only have received it from there.
        queue = self._queues.queue_of(hostname) if event_type == "task-received" else None
        try:
            task_event = parse_task_event(event, queue or DEFAULT_QUEUE)
        except InvalidEvent as invalid:
            self._dropped.drop(invalid.reason)
            return
        if task_event is None:
            self._dropped.received()
        else:
            self._recorder.record(task_event)
