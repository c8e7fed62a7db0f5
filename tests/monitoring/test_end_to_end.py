"""The monitoring bundle against a real Prometheus scraping a real prefork worker and a real
beat: every recording rule and every dashboard query returns data, CeleryWorkerDown fires
when the worker is killed and CeleryBeatDown when beat stops, the alerts on stuck tasks,
old and held messages and pool memory fire, and Prometheus with exemplar storage keeps the
task ids of the runs.

The worker runs on RabbitMQ, with ``celery-prom exporter`` beside it (job
``celery-exporter``): RabbitMQ is the broker that reports queue consumers, so the queries
that read exporter-only families (queue lengths, consumers, heartbeats) have data too. Beat
(job ``celery-beat``) sends an entry every second to a queue of its own, so the worker's
counts stay the waves'. The queries of queue latency and unacknowledged messages, which the
exporter reads from Redis only, and the alerts on them run against a worker and an exporter
on Redis. The exemplar test needs only the worker, on Redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from tests.exporter_process import running_exporter_for
from tests.monitoring.prometheus import PrometheusServer, running_prometheus
from tests.monitoring.promql import (
    ALERT_RULES,
    RECORDING_RULES,
    RULE_FILES,
    dashboard_queries,
    load_dashboards,
    load_yaml,
    metric_names,
    needs_exporter,
    needs_redis,
    recorded_names,
    substitute,
)
from tests.support import Broker, WorkerProcess, running_beat, running_worker, wait_for

T = "cptest_tasks."
#: Each wave: (task, args) messages; flaky(1) fails once, retries, then succeeds.
Wave = list[tuple[str, list[Any]]]
FIRST_WAVE: Wave = [("noop", []), ("fail", ["ValueError"]), ("flaky", [1])]
SECOND_WAVE: Wave = (
    [("noop", [])] * 10
    + [("fail", ["ValueError"])] * 2
    + [("fail", ["PaymentDeclined"])]
    + [("flaky", [1])] * 2
)


#: Long enough to be running whenever the test looks; the worker is killed before the end.
STUCK: Wave = [("sleep", [600])]
#: The alerts on the signals, and default thresholds that real data crosses at once: a task
#: or a message older than a second, a pool process holding more than 1 MiB.
SIGNAL_ALERTS = (
    "CeleryTaskRunningTooLong",
    "CeleryQueueLatencyHigh",
    "CeleryQueueUnackedAgeHigh",
    "CeleryWorkerPoolProcessMemoryHigh",
)
LOW_THRESHOLDS = {
    "celery_alert:task_running_seconds:threshold": 1,
    "celery_alert:queue_latency_seconds:threshold": 1,
    "celery_alert:queue_unacked_oldest_seconds:threshold": 1,
    "celery_alert:pool_process_memory_bytes:threshold": 1024 * 1024,
}


def started(wave: Wave) -> int:
    """Executions a wave starts: flaky(1) runs twice."""
    return sum(2 if task == "flaky" else 1 for task, _ in wave)


VARIABLE_NAMES = ("task", "queue", "worker", "__rate_interval", "__range")


def dashboard_variables(worker: WorkerProcess) -> dict[str, str]:
    return {
        "task": "|".join(f"{T}{task}" for task in ("noop", "fail", "flaky", "sleep")),
        "queue": worker.queue,
        "worker": worker.hostname,
        # Longer than the test, so every increase of the run is inside the window.
        "__rate_interval": "5m",
        "__range": "5m",
    }


def all_dashboard_queries(variables: dict[str, str]) -> list[str]:
    return [
        substitute(query, variables)
        for dashboard in load_dashboards().values()
        for query in dashboard_queries(dashboard)
    ]


def alert_rules_for_the_test(
    directory: Path, short: tuple[str, ...], thresholds: dict[str, float] | None = None
) -> Path:
    """The alert rules with the ``for`` of the ``short`` alerts cut to a second, and the
    default ``thresholds`` (record name -> value) replaced."""
    rules = load_yaml(ALERT_RULES)
    thresholds = thresholds or {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in short:
                rule["for"] = "1s"
            if rule.get("record") in thresholds:
                rule["expr"] = f"vector({thresholds[rule['record']]})"
    path = directory / "celery-alerts.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return path


def send(app: Any, wave: Wave) -> None:
    for task, args in wave:
        app.send_task(f"{T}{task}", args=args)


def wait_until_fired(prometheus: PrometheusServer, alert: str) -> list[dict[str, Any]]:
    firing = wait_for(
        lambda: prometheus.query(f'ALERTS{{alertname="{alert}", alertstate="firing"}}'),
        what=f"{alert} to fire",
    )
    return [sample["metric"] for sample in firing]


def wait_until_scraped(prometheus: PrometheusServer, total: int, outcome: str = "started") -> None:
    """Until Prometheus holds the worker's count of executions with ``outcome``."""

    def scraped() -> bool:
        result = prometheus.query(f'sum(celery_task_{outcome}_total{{job="celery-worker"}})')
        return bool(result) and float(result[0]["value"][1]) == total

    wait_for(scraped, what=f"Prometheus to scrape {total} {outcome} tasks")


def without_data(prometheus: PrometheusServer, queries: list[str]) -> list[str]:
    return [query for query in queries if not prometheus.has_finite_sample(query)]


def assert_data_arrives(prometheus: PrometheusServer, queries: list[str]) -> None:
    """Every query returns a finite sample before the deadline; else name those that do not."""
    missing = list(queries)

    def none_missing() -> bool:
        missing[:] = without_data(prometheus, missing)
        return not missing

    try:
        wait_for(none_missing, what="data")
    except AssertionError:
        pytest.fail("no data for:\n" + "\n".join(missing))


def kill(worker: WorkerProcess) -> None:
    """SIGKILL the worker's main process, then its pool children (they would linger)."""
    children = [
        pid
        for thread in Path(f"/proc/{worker.process.pid}/task").iterdir()
        for pid in (thread / "children").read_text().split()
    ]
    worker.process.kill()
    worker.process.wait(30)
    for child in map(int, children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@contextlib.contextmanager
def killed_at_exit(worker: WorkerProcess) -> Iterator[None]:
    """SIGKILL the worker and its pool at the end if it still runs: a warm shutdown would
    wait for its sleeping tasks."""
    try:
        yield
    finally:
        if worker.process.poll() is None:
            kill(worker)


class Split(NamedTuple):
    """Queries or record names by what has to run for them to have data.

    Exporter ones read queue lengths, consumers, heartbeats or broker state; Redis ones read
    the queue facts the exporter has on Redis only; alert ones read Prometheus' ALERTS, which
    has data once an alert is pending or firing; worker ones the rest.
    """

    worker: list[str]
    alert: list[str]
    exporter: list[str]
    redis: list[str]


def split(items: list[str]) -> Split:
    redis = [item for item in items if needs_redis(item)]
    exporter = [item for item in items if needs_exporter(item) and item not in redis]
    alert = [
        item
        for item in items
        if "ALERTS" in metric_names(item) and item not in exporter and item not in redis
    ]
    worker = [item for item in items if item not in {*redis, *exporter, *alert}]
    return Split(worker, alert, exporter, redis)


def test_only_queue_heartbeat_and_consumer_queries_need_the_exporter() -> None:
    """What the exporter beside the worker has to answer for, on any broker and on Redis."""
    records = split(sorted(recorded_names(*RULE_FILES)))
    assert records.exporter == [
        "queue_name:celery_active_consumer_count:max",
        "queue_name:celery_alert_queue_backlog_messages:threshold",
        "queue_name:celery_queue_length:deriv5m",
        "queue_name:celery_queue_length:max",
    ]
    assert records.redis == [
        "queue_name:celery_alert_queue_latency_seconds:threshold",
        "queue_name:celery_alert_queue_unacked_oldest_seconds:threshold",
        "queue_name:celery_queue_latency_seconds:max",
        "queue_name:celery_queue_unacked_messages:max",
        "queue_name:celery_queue_unacked_oldest_seconds:max",
    ]
    queries = split(all_dashboard_queries(dict.fromkeys(VARIABLE_NAMES, "x")))
    assert sorted(queries.exporter) == [
        "max by (hostname) (celery_worker_up)",
        "queue_name:celery_active_consumer_count:max",
        "queue_name:celery_queue_length:deriv5m",
        "queue_name:celery_queue_length:max",
        "sum(max by (hostname) (celery_worker_up))",
        "sum(queue_name:celery_queue_length:max)",
    ]
    assert sorted(queries.redis) == [
        "queue_name:celery_queue_latency_seconds:max",
        "queue_name:celery_queue_unacked_messages:max",
        "queue_name:celery_queue_unacked_oldest_seconds:max",
    ]


@pytest.mark.slow
def test_rules_and_dashboards_return_data_and_worker_and_beat_down_fire(
    amqp_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    down_alerts = ("CeleryWorkerDown", "CeleryBeatDown")
    rule_files = [RECORDING_RULES, alert_rules_for_the_test(tmp_path, down_alerts)]
    with (
        running_worker(amqp_broker, tmp_path, concurrency=2) as worker,
        killed_at_exit(worker),
        running_exporter_for(amqp_broker, tmp_path, "-Q", worker.queue) as exporter,
        running_beat(amqp_broker, tmp_path, {"every-second": 1.0}) as beat,
    ):
        targets = {
            "celery-worker": [f"127.0.0.1:{worker.port}"],
            "celery-exporter": [f"127.0.0.1:{exporter.port}"],
            "celery-beat": [f"127.0.0.1:{beat.port}"],
        }
        records = split(sorted(recorded_names(*RULE_FILES)))
        queries = split(all_dashboard_queries(dashboard_variables(worker)))
        with running_prometheus(tmp_path, targets, rule_files) as prometheus:
            app = client_app_for(amqp_broker, worker.queue)
            # Series must exist before the counted increases, or rates over the first
            # samples would be 0 and percentiles NaN.
            send(app, FIRST_WAVE)
            wait_until_scraped(prometheus, started(FIRST_WAVE))
            send(app, SECOND_WAVE)
            wait_until_scraped(prometheus, started(FIRST_WAVE) + started(SECOND_WAVE))
            # Running while the queries are asked, for those of the longest running task.
            send(app, STUCK)

            assert_data_arrives(
                prometheus, records.worker + queries.worker + records.exporter + queries.exporter
            )
            assert prometheus.query('ALERTS{alertname=~"CeleryWorkerDown|CeleryBeatDown"}') == []

            kill(worker)
            assert wait_until_fired(prometheus, "CeleryWorkerDown") == [
                {
                    "__name__": "ALERTS",
                    "alertname": "CeleryWorkerDown",
                    "alertstate": "firing",
                    "instance": f"127.0.0.1:{worker.port}",
                    "job": "celery-worker",
                    "severity": "warning",
                }
            ]
            assert without_data(prometheus, queries.alert) == []

            beat.stop()
            assert wait_until_fired(prometheus, "CeleryBeatDown") == [
                {
                    "__name__": "ALERTS",
                    "alertname": "CeleryBeatDown",
                    "alertstate": "firing",
                    "instance": f"127.0.0.1:{beat.port}",
                    "job": "celery-beat",
                    "severity": "critical",
                }
            ]


@pytest.mark.slow
def test_redis_queue_queries_return_data_and_the_signal_alerts_fire(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    rules = alert_rules_for_the_test(tmp_path, SIGNAL_ALERTS, LOW_THRESHOLDS)
    with (
        running_worker(redis_broker, tmp_path, concurrency=1) as worker,
        killed_at_exit(worker),
        running_exporter_for(redis_broker, tmp_path, "-Q", worker.queue) as exporter,
    ):
        targets = {
            "celery-worker": [f"127.0.0.1:{worker.port}"],
            "celery-exporter": [f"127.0.0.1:{exporter.port}"],
        }
        records = split(sorted(recorded_names(*RULE_FILES)))
        queries = split(all_dashboard_queries(dashboard_variables(worker)))
        with running_prometheus(tmp_path, targets, [RECORDING_RULES, rules]) as prometheus:
            app = client_app_for(redis_broker, worker.queue)
            # The one pool process runs the first, the worker holds the next ones it
            # prefetched unacknowledged, the rest wait in the queue.
            send(app, STUCK * 8)

            assert_data_arrives(prometheus, records.redis + queries.redis)
            firing = {alert: wait_until_fired(prometheus, alert) for alert in SIGNAL_ALERTS}

    labels = {"__name__": "ALERTS", "alertstate": "firing", "severity": "warning"}
    queue = {"queue_name": worker.queue}
    assert firing == {
        "CeleryTaskRunningTooLong": [
            {
                **labels,
                "alertname": "CeleryTaskRunningTooLong",
                "name": f"{T}sleep",
                "hostname": worker.hostname,
                **queue,
            }
        ],
        "CeleryQueueLatencyHigh": [{**labels, "alertname": "CeleryQueueLatencyHigh", **queue}],
        "CeleryQueueUnackedAgeHigh": [
            {**labels, "alertname": "CeleryQueueUnackedAgeHigh", **queue}
        ],
        "CeleryWorkerPoolProcessMemoryHigh": [
            {
                **labels,
                "alertname": "CeleryWorkerPoolProcessMemoryHigh",
                "hostname": worker.hostname,
                "process_index": "0",
            }
        ],
    }


@pytest.mark.slow
def test_prometheus_stores_the_task_ids_of_the_runs_as_exemplars(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, concurrency=2) as worker:
        targets = {"celery-worker": [f"127.0.0.1:{worker.port}"]}
        flag = "--enable-feature=exemplar-storage"
        with running_prometheus(tmp_path, targets, [], flag) as prometheus:
            app = client_app_for(redis_broker, worker.queue)
            task_ids = []
            # One at a time, each scraped before the next: a later run in the same bucket
            # would replace its exemplar before Prometheus saw it.
            for index in range(1, 5):
                task_ids.append(app.send_task(f"{T}noop").id)
                wait_until_scraped(prometheus, index, "succeeded")

            for histogram in ("runtime", "queue_wait"):
                found = prometheus.exemplar_labels(f"celery_task_{histogram}_seconds_bucket")
                assert sorted(labels["task_id"] for labels in found) == sorted(task_ids)
