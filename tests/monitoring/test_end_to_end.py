"""The monitoring bundle against a real Prometheus scraping a real prefork worker and a real
beat: every recording rule and every dashboard query returns data, CeleryWorkerDown fires
when the worker is killed and CeleryBeatDown when beat stops, and Prometheus with exemplar
storage keeps the task ids of the runs.

The worker runs on RabbitMQ, with ``celery-prom exporter`` beside it (job
``celery-exporter``): RabbitMQ is the broker that reports queue consumers, so the queries
that read exporter-only families (queue lengths, consumers, heartbeats) have data too. Beat
(job ``celery-beat``) sends an entry every second to a queue of its own, so the worker's
counts stay the waves'. The exemplar test needs only the worker, on Redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def started(wave: Wave) -> int:
    """Executions a wave starts: flaky(1) runs twice."""
    return sum(2 if task == "flaky" else 1 for task, _ in wave)


VARIABLE_NAMES = ("task", "queue", "worker", "__rate_interval", "__range")


def dashboard_variables(worker: WorkerProcess) -> dict[str, str]:
    return {
        "task": "|".join(f"{T}{task}" for task in ("noop", "fail", "flaky")),
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


def alert_rules_with_short_down_alerts(directory: Path) -> Path:
    """The alert rules with CeleryWorkerDown's and CeleryBeatDown's ``for`` cut to a second."""
    rules = load_yaml(ALERT_RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in ("CeleryWorkerDown", "CeleryBeatDown"):
                rule["for"] = "1s"
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


def split(items: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(worker-side, alert, exporter-only) queries or record names.

    Exporter-only ones read queue lengths, consumers, heartbeats or broker state; alert ones
    read Prometheus' ALERTS, which has data once an alert is pending or firing.
    """
    exporter = [item for item in items if needs_exporter(item)]
    alert = [item for item in items if "ALERTS" in metric_names(item) and item not in exporter]
    worker = [item for item in items if item not in exporter and item not in alert]
    return worker, alert, exporter


def test_only_queue_heartbeat_and_consumer_queries_need_the_exporter() -> None:
    """What the exporter beside the worker has to answer for."""
    _, _, exporter_records = split(sorted(recorded_names(*RULE_FILES)))
    assert exporter_records == [
        "queue_name:celery_active_consumer_count:max",
        "queue_name:celery_alert_queue_backlog_messages:threshold",
        "queue_name:celery_queue_length:deriv5m",
        "queue_name:celery_queue_length:max",
    ]
    _, _, exporter_queries = split(all_dashboard_queries(dict.fromkeys(VARIABLE_NAMES, "x")))
    assert sorted(exporter_queries) == [
        "max by (hostname) (celery_worker_up)",
        "queue_name:celery_active_consumer_count:max",
        "queue_name:celery_queue_length:deriv5m",
        "queue_name:celery_queue_length:max",
        "sum(max by (hostname) (celery_worker_up))",
        "sum(queue_name:celery_queue_length:max)",
    ]


@pytest.mark.slow
def test_rules_and_dashboards_return_data_and_worker_and_beat_down_fire(
    amqp_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    rule_files = [RECORDING_RULES, alert_rules_with_short_down_alerts(tmp_path)]
    with (
        running_worker(amqp_broker, tmp_path, concurrency=2) as worker,
        running_exporter_for(amqp_broker, tmp_path, "-Q", worker.queue) as exporter,
        running_beat(amqp_broker, tmp_path, {"every-second": 1.0}) as beat,
    ):
        targets = {
            "celery-worker": [f"127.0.0.1:{worker.port}"],
            "celery-exporter": [f"127.0.0.1:{exporter.port}"],
            "celery-beat": [f"127.0.0.1:{beat.port}"],
        }
        worker_records, _, exporter_records = split(sorted(recorded_names(*RULE_FILES)))
        worker_queries, alert_queries, exporter_queries = split(
            all_dashboard_queries(dashboard_variables(worker))
        )
        with running_prometheus(tmp_path, targets, rule_files) as prometheus:
            app = client_app_for(amqp_broker, worker.queue)
            # Series must exist before the counted increases, or rates over the first
            # samples would be 0 and percentiles NaN.
            send(app, FIRST_WAVE)
            wait_until_scraped(prometheus, started(FIRST_WAVE))
            send(app, SECOND_WAVE)
            wait_until_scraped(prometheus, started(FIRST_WAVE) + started(SECOND_WAVE))

            assert_data_arrives(
                prometheus,
                worker_records + worker_queries + exporter_records + exporter_queries,
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
            assert without_data(prometheus, alert_queries) == []

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
