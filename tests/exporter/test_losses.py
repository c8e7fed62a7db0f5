"""Events lost while disconnected, estimated from the senders' clocks."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from celery_prom.exporter.dropped import DroppedEvents
from celery_prom.exporter.losses import LossEstimator
from celery_prom.recorder import Recorder, RecorderStats
from celery_prom.store import TaskStore
from tests.exporter_process import RawEvents, event, hostname, kombu_envelope, running_exporter
from tests.support import Broker, private_redis


def test_losses_are_counted_from_clock_gaps_across_reconnects_only() -> None:
    dropped = DroppedEvents(Recorder(TaskStore()))
    losses = LossEstimator(dropped)
    losses.new_connection()
    for clock in (1, 2, 5):  # a gap while connected: gossip, not loss
        losses.observe("w@h", clock)
    losses.new_connection()
    losses.observe("w@h", 9)  # 6, 7 and 8 never arrived
    losses.observe("w@h", 20)
    losses.observe("v@h", 100)  # first seen after the reconnect: nothing to compare
    assert dropped.counts() == RecorderStats(received=0, dropped={"lost": 3})


@pytest.mark.slow
def test_a_lagging_subscriber_cut_off_by_redis_reconnects_and_counts_the_loss(
    tmp_path: Path,
) -> None:
    """Redis closes a subscriber whose output buffer passes the pubsub limit. Freezing the
    exporter while a burst is published makes it lag for sure; every event sent is then
    either received or counted as lost (from the sender's clock), exactly."""
    host = hostname()
    burst, after = 20_000, 10
    with (
        private_redis(tmp_path, "--client-output-buffer-limit", "pubsub 256kb 128kb 1") as server,
        running_exporter(server.url, tmp_path) as exporter,
    ):
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        raw = RawEvents(Broker(server.url))
        now = time.time()
        exporter.process.send_signal(signal.SIGSTOP)
        try:
            pipe = server.client().pipeline(transaction=False)
            for clock in range(1, burst + 1):
                payload = kombu_envelope(
                    json.dumps(
                        event("worker-heartbeat", host, clock, now, active=0, processed=0)
                    ).encode()
                )
                pipe.publish(raw._topic, payload)
            pipe.execute()
        finally:
            exporter.process.send_signal(signal.SIGCONT)
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_reconnects_total") == 1, what="a reconnect"
        )
        raw.events(
            [
                event("worker-heartbeat", host, clock, now, active=0, processed=0)
                for clock in range(burst + 1, burst + after + 1)
            ]
        )
        result = exporter.wait_for_scrape(
            lambda s: (
                (s.value("celery_prom_events_received_total") or 0)
                + (s.value("celery_prom_events_dropped_total", reason="lost") or 0)
                == burst + after
            ),
            what="every event received or counted as lost",
        )
        assert (result.value("celery_prom_events_dropped_total", reason="lost") or 0) > 0
        raw.close()
