"""Routing decoded events: task events to the recorder, worker events to liveness.

Both event streams hand raw payloads to ``EventRouter``, which decodes them (``decoding``),
splits ``task.multi`` batches, and routes each event: task events to the recorder (unless
the worker already counted them itself), worker events to the liveness tracker. Anything
unusable is counted as dropped with its reason.
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
from celery_prom.recorder import DROP_MALFORMED, DROP_UNKNOWN_TYPE, RECORDED_MARK, Recorder


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
                if event_type == "task-received":
                    self._complete_received(event)
                self._recorder.record(event)
        elif event_type in WORKER_EVENTS:
            reason = self._liveness.observe(event)
            if reason is None:
                self._queues.notice(event["hostname"])
                self._dropped.received()
            else:
                self._dropped.drop(reason)
        else:
            self._dropped.drop(DROP_UNKNOWN_TYPE)

    def _complete_received(self, event: dict[str, Any]) -> None:
        # Celery's task-received names no queue (the worker tap adds it); datetimes come
        # in kombu's JSON encoding.
        if "queue" not in event:
            queue = self._queues.queue_of(event.get("hostname"))
            if queue is not None:
                event["queue"] = queue
        eta = event.get("eta")
        if isinstance(eta, dict):
            event["eta"] = eta.get("__value__")
