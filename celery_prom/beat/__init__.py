"""Beat's metrics: every periodic task sent on time, and a beat that stops shows.

``celery_prom.install(app)`` calls ``instrument_beat(app)``: a standalone ``celery beat``
then serves its own endpoint (``service``), and a worker run with ``-B`` serves its embedded
beat's metrics on the worker's endpoint (``embedded``).
"""

from __future__ import annotations

from typing import Any

from celery import signals

from celery_prom.beat.embedded import EmbeddedBeat
from celery_prom.beat.service import on_beat_init

__all__ = ["EmbeddedBeat", "instrument_beat"]


def instrument_beat(app: Any) -> None:
    """Instrument the beats of this process and ``app``'s workers run with ``-B``.

    Safe to call more than once.
    """
    signals.beat_init.connect(on_beat_init, weak=False, dispatch_uid="celery_prom.beat")
    app.steps["worker"].add(EmbeddedBeat)
