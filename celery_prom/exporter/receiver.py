"""An event receiver that never gives up.

``EventReceiver.run`` connects, pumps events until the connection breaks, and connects
again after a capped exponential backoff with jitter, for as long as the process lives;
a broker fault is logged (password masked) and reported as ``celery_prom_broker_up 0``,
never a reason to exit.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from celery_prom.exporter.broker import BrokerStatus
from celery_prom.exporter.liveness import WorkerLiveness
from celery_prom.exporter.losses import LossEstimator
from celery_prom.exporter.streams import EventStream
from celery_prom.faults import describe_error

logger = logging.getLogger(__name__)


class Backoff:
    """Capped exponential backoff with jitter: each delay is drawn from the upper half of
    ``first * 2**n`` (capped), so a fleet of exporters does not reconnect in lockstep."""

    def __init__(
        self, first: float = 0.5, cap: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self.first = first
        self.cap = cap
        self._rng = rng or random.Random()
        self._failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * 2**self._failures)
        self._failures = min(self._failures + 1, 32)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._failures = 0


class EventReceiver:
    """Keeps an event stream connected for as long as it runs; returns only when stopped.

    A connection that breaks within ``stable_after`` seconds of being made does not reset
    the backoff, so a broker that accepts and drops connections is not hammered.
    """

    def __init__(
        self,
        new_stream: Callable[[], EventStream],
        status: BrokerStatus,
        liveness: WorkerLiveness,
        losses: LossEstimator,
        *,
        safe_url: str,
        backoff: Backoff | None = None,
        stable_after: float = 10.0,
    ) -> None:
        self._new_stream = new_stream
        self._status = status
        self._liveness = liveness
        self._losses = losses
        self._safe_url = safe_url
        self._backoff = backoff or Backoff()
        self._stable_after = stable_after
        self.stopped = threading.Event()

    def run(self) -> None:
        connected_before = False
        while not self.stopped.is_set():
            stream = self._new_stream()
            # TypeError and ValueError: transport options the client library rejects; the
            # message says which, and /health shows it until the options are fixed.
            connect_errors: tuple[type[BaseException], ...] = (
                *stream.errors,
                TypeError,
                ValueError,
            )
            try:
                stream.connect()
            except connect_errors as exc:
                self._close(stream)
                self._wait_after_failure("cannot connect to", exc)
                continue
            self._on_connected(reconnect=connected_before)
            connected_before = True
            started = time.monotonic()
            try:
                stream.pump(self.stopped)
            except stream.errors as exc:
                if time.monotonic() - started >= self._stable_after:
                    self._backoff.reset()
                self._liveness.hold_purge()
                self._wait_after_failure("lost the event stream from", exc)
            finally:
                self._close(stream)

    def stop(self) -> None:
        self.stopped.set()

    def _on_connected(self, reconnect: bool) -> None:
        self._losses.new_connection()
        self._liveness.resume_purge()
        self._status.receiver_connected(reconnect)
        logger.info("celery-prom: receiving events from %s", self._safe_url)

    def _wait_after_failure(self, what: str, exc: BaseException) -> None:
        error = describe_error(exc)
        self._status.receiver_lost(error)
        delay = self._backoff.next_delay()
        logger.warning(
            "celery-prom: %s %s (%s); retrying in %.1fs", what, self._safe_url, error, delay
        )
        self.stopped.wait(delay)

    @staticmethod
    def _close(stream: EventStream) -> None:
        try:
            stream.close()
        except stream.errors as exc:
            logger.debug("celery-prom: closing a broken event stream: %s", describe_error(exc))
