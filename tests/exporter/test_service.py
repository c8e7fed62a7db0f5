"""The exporter end to end: real workers sending task events, real brokers, real HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.bootsteps.test_server import (
    EXEMPLAR_BUCKETS,
    scrape_exemplars,
    send_sleeps_into_each_bucket,
)
from tests.bootsteps.test_tap import MIX_EXPECTED, T, outcomes, send_mix
from tests.exporter.test_liveness import worker_is_up
from tests.exporter.test_receiver import succeeded, task_events
from tests.exporter.test_sqs import fill
from tests.exporter_process import (
    RawEvents,
    hostname,
    plain_worker,
    running_exporter,
    running_exporter_for,
)
from tests.support import (
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    Broker,
    Scrape,
    SqsServer,
    WorkerProcess,
    http_get,
    private_redis,
    promtool_check_metrics,
    unique,
    wait_for,
)

#: What /health and the log say where workers cannot broadcast to the exporter.
WITHOUT_EVENTS = (
    "the sqs transport cannot broadcast Celery events: no worker liveness or task counts "
    "here, and only the queues given are reported; scrape the workers' own endpoints "
    "(celery_prom.install) for those"
)


@pytest.mark.slow
def test_task_events_are_counted_exactly(
    own_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    broker = own_broker
    with (
        plain_worker(broker, tmp_path) as worker,
        running_exporter_for(broker, tmp_path) as exporter,
    ):
        exporter.wait_until_counting(worker)
        send_mix(client_app_for(broker, worker.queue))
        total = sum(
            e.succeeded + e.retried + sum(n for _, n in e.failures) for e in MIX_EXPECTED.values()
        )
        result = exporter.wait_for_scrape(
            lambda s: outcomes(s, worker) >= total, what=f"{total} outcomes"
        )
        assert task_counts(result, worker) == {
            name: {
                "received": want.received,
                "started": want.started,
                "succeeded": want.succeeded,
                "retried": want.retried,
                "runtime observations": want.succeeded,
                "failures": dict(want.failures),
            }
            for name, want in MIX_EXPECTED.items()
        }
        assert result.value("celery_queue_length", queue_name=worker.queue) == 0
        if broker.kind == "amqp":
            assert result.value("celery_active_consumer_count", queue_name=worker.queue) == 1
        assert result.value("celery_prom_broker_up") == 1
        assert result.series("celery_prom_events_dropped_total") == {}
        assert result.value("celery_prom_collector_success", collector="queues") == 1
        # The catalogue keeps the most used exporter's name for RabbitMQ's consumer count,
        # which promtool's lint dislikes; it is the only finding.
        consumer_count_name = (
            "celery_active_consumer_count non-histogram and non-summary metrics should not have"
            ' "_count" suffix'
        )
        expected_lint = [consumer_count_name] if broker.kind == "amqp" else []
        assert promtool_check_metrics(result.text) == expected_lint


@pytest.mark.slow
def test_an_instrumented_worker_is_not_counted_twice(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    redis_broker = own_redis_broker
    with (
        plain_worker(redis_broker, tmp_path, install=True) as worker,
        running_exporter_for(redis_broker, tmp_path) as exporter,
    ):
        exporter.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat")
        app = client_app_for(redis_broker, worker.queue)
        for _ in range(5):
            app.send_task(f"{T}noop")
        # received, started and succeeded for each task: all counted by the worker itself.
        result = exporter.wait_for_scrape(
            lambda s: (
                s.value("celery_prom_events_dropped_total", reason="recorded_by_worker") == 15
            ),
            what="15 task events skipped",
        )
        assert result.total("celery_task_received_total", hostname=worker.hostname) == 0
        own = worker.scrape()
        assert (
            own.value(
                "celery_task_succeeded_total",
                name=f"{T}noop",
                hostname=worker.hostname,
                queue_name=worker.queue,
            )
            == 5
        )


@pytest.mark.slow
def test_an_openmetrics_scrape_shows_the_tasks_run_as_exemplars(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    buckets = [f"--{key.replace('_', '-')}={value}" for key, value in EXEMPLAR_BUCKETS.items()]
    with (
        plain_worker(own_redis_broker, tmp_path, "-c", "1") as worker,
        running_exporter_for(own_redis_broker, tmp_path, *buckets) as exporter,
    ):
        exporter.wait_until_counting(worker)
        task_ids = send_sleeps_into_each_bucket(client_app_for(own_redis_broker, worker.queue))
        exporter.wait_for_scrape(
            lambda s: s.total("celery_task_succeeded_total") == 3, what="three successes"
        )

        assert scrape_exemplars(exporter.port, "celery_task_runtime_seconds_bucket") == task_ids
        # Plain task events carry no publish time: no queue-wait observations, no exemplars.
        assert scrape_exemplars(exporter.port, "celery_task_queue_wait_seconds_bucket") == {}


def task_counts(result: Scrape, worker: WorkerProcess) -> dict[str, dict[str, object]]:
    counts: dict[str, dict[str, object]] = {}
    for name in MIX_EXPECTED:
        labels = {"name": name, "hostname": worker.hostname, "queue_name": worker.queue}
        counts[name] = {
            "received": result.value("celery_task_received_total", **labels),
            "started": result.value("celery_task_started_total", **labels),
            "succeeded": result.value("celery_task_succeeded_total", **labels),
            "retried": result.value("celery_task_retried_total", **labels),
            "runtime observations": result.value("celery_task_runtime_seconds_count", **labels),
            "failures": result.by_label("celery_task_failed_total", "exception", **labels),
        }
    return counts


@pytest.mark.slow
def test_serves_at_once_without_a_broker_and_connects_when_it_appears(tmp_path: Path) -> None:
    with (
        private_redis(tmp_path, start=False) as server,
        running_exporter(server.url, tmp_path) as exporter,
    ):
        first = exporter.scrape()
        assert first is not None
        assert first.value("celery_prom_broker_up") == 0
        assert exporter.health()[0] == 503
        assert "<h1>celery-prom exporter</h1>" in http_get(f"http://127.0.0.1:{exporter.port}/")
        server.start()
        exporter.wait_for_scrape(
            lambda s: s.value("celery_prom_broker_up") == 1, what="broker_up 1"
        )
        host = hostname()
        raw = RawEvents(Broker(server.url))
        raw.events(task_events(host, 1, 2))
        result = exporter.wait_for_scrape(lambda s: succeeded(s, host) == 2, what="2 tasks")
        assert result.value("celery_prom_broker_reconnects_total") == 0
        assert exporter.health() == (
            200,
            {
                "healthy": True,
                "checks": {"broker": "up", "broker_url": server.url, "metrics": "ok"},
            },
        )
        raw.close()


@pytest.mark.slow
def test_a_restarted_exporter_picks_up_running_workers(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with plain_worker(own_redis_broker, tmp_path) as worker:
        app = client_app_for(own_redis_broker, worker.queue)
        with running_exporter_for(own_redis_broker, tmp_path) as first:
            first.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat")
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        with running_exporter_for(own_redis_broker, tmp_path) as second:
            second.wait_for_scrape(worker_is_up(worker), what="the worker's heartbeat again")
            # Its queue, learned from its active_queues, also labels its tasks.
            second.wait_for_scrape(
                lambda s: s.value("celery_queue_length", queue_name=worker.queue) is not None,
                what="the worker's queue",
            )
            for _ in range(4):
                app.send_task(f"{T}noop")
            result = second.wait_for_scrape(
                lambda s: s.total("celery_task_succeeded_total", hostname=worker.hostname) >= 4,
                what="the tasks sent after the restart",
            )
        worker.assert_alive()

    labels = {"name": f"{T}noop", "hostname": worker.hostname, "queue_name": worker.queue}
    assert result.value("celery_task_received_total", **labels) == 4
    assert result.value("celery_task_succeeded_total", **labels) == 4


def test_on_sqs_queues_are_served_and_no_event_is_listened_for(
    sqs_server: SqsServer, tmp_path: Path
) -> None:
    busy, missing = unique("busy"), unique("missing")
    fill(sqs_server.client(), busy, ready=2, in_flight=1, delayed=3)
    with running_exporter_for(sqs_server.broker(), tmp_path, "-Q", f"{busy},{missing}") as exporter:
        result = exporter.wait_for_scrape(
            lambda s: s.value("celery_queue_length", queue_name=busy) == 2, what="2 ready"
        )
        assert {
            family: result.by_label(family, "queue_name")
            for family in (
                "celery_queue_length",
                "celery_queue_unacked_messages",
                "celery_queue_delayed_messages",
            )
        } == {
            "celery_queue_length": {busy: 2, missing: 0},
            "celery_queue_unacked_messages": {busy: 1, missing: 0},
            "celery_queue_delayed_messages": {busy: 3, missing: 0},
        }
        assert result.value("celery_prom_broker_up") == 1
        assert result.series("celery_worker_up") == {}
        assert result.series("celery_active_consumer_count") == {}
        status, health = exporter.health()
        assert (status, health["checks"]["events"]) == (200, WITHOUT_EVENTS)
    assert exporter.output().count(WITHOUT_EVENTS) == 1  # said once, at start


def redis_keys(broker: Broker) -> Callable[[], list[bytes]]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    prefix = broker.transport_options["global_keyprefix"]
    return lambda: sorted(client.scan_iter(match=f"{prefix}*"))


def rabbitmq_queues(broker: Broker) -> Callable[[], list[str]]:
    vhost = broker.url.rsplit("/", 1)[1]
    command = ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "--formatter", "json"]

    def queues() -> list[str]:
        listed = subprocess.run(command, check=True, capture_output=True, timeout=120).stdout
        return sorted(queue["name"] for queue in json.loads(listed))

    return queues


@pytest.mark.parametrize("kind", ["redis", pytest.param("amqp", marks=pytest.mark.slow), "sqs"])
def test_an_exporter_leaves_the_broker_as_it_found_it(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Its event queue or subscription, its remote-control replies and the queues it sizes
    (one that does not exist) leave nothing behind once it stops."""
    broker: Broker
    if kind == "sqs":
        sqs: SqsServer = request.getfixturevalue("sqs_server")
        broker, holdings = sqs.broker(), sqs.queue_names
    else:
        broker = request.getfixturevalue(f"own_{kind}_broker")
        holdings = redis_keys(broker) if kind == "redis" else rabbitmq_queues(broker)
    before = holdings()
    missing = unique("missing")
    with running_exporter_for(broker, tmp_path, "-Q", missing, "--log-level", "DEBUG") as exporter:
        exporter.wait_for_scrape(
            lambda s: s.value("celery_queue_length", queue_name=missing) == 0,
            what="the missing queue sized",
        )
        if kind != "sqs":
            wait_for(
                lambda: "workers said which queues" in exporter.output(),
                what="a round of asking workers for their queues",
            )
        if kind == "amqp":
            wait_for(lambda: holdings() != before, what="the exporter's event queue")
    assert holdings() == before
