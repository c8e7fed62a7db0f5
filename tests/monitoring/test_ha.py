"""monitoring/prometheus-ha.yml end to end: two Prometheus replicas with its settings write
with remote_write into a third Prometheus, which stands in for Thanos Receive or Mimir.

Both replicas scrape the same targets: a worker running the bootstep (job celery-worker),
and two exporters (job celery-exporter) that both count the tasks of a second worker, which
sends task events instead. So the receiver holds every task count six times over (two
replicas, and the evented worker's counts from two exporters). Each replica's recorded
series reach it once per replica, labelled alike but for ``replica`` (what Thanos' and
Mimir's deduplication keys on), and the recording rules' expressions, run on the receiver
over all of it, count each task exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bootsteps.test_tap import MIX_EXPECTED, T, send_mix
from tests.exporter_process import ExporterProcess, plain_worker, running_exporter_for
from tests.monitoring.prometheus import INTERVAL, PrometheusServer, prometheus_process
from tests.monitoring.promql import MONITORING, RECORDING_RULES, load_yaml
from tests.support import Broker, WorkerProcess, running_worker, wait_for

HA_CONFIG = MONITORING / "prometheus-ha.yml"
REPLICAS = ("a", "b")
#: Outcomes (succeeded, failed, retried) of one run of the mix.
OUTCOMES = sum(
    want.succeeded + want.retried + sum(count for _, count in want.failures)
    for want in MIX_EXPECTED.values()
)
#: The rules that count a task outcome from the scraped counters, by recorded name.
TASK_RATE_RULES = {
    rule["record"]: rule["expr"]
    for group in load_yaml(RECORDING_RULES)["groups"]
    for rule in group["rules"]
    if "record" in rule and re.search(r"rate\(celery_task_\w+_total\[5m\]\)", rule["expr"])
}


def replica_config(receiver: PrometheusServer, exporters: list[ExporterProcess]) -> dict[str, Any]:
    """prometheus-ha.yml with test intervals, the receiver and the exporters' addresses."""
    config: dict[str, Any] = load_yaml(HA_CONFIG)
    config["global"].update(
        scrape_interval=INTERVAL, scrape_timeout=INTERVAL, evaluation_interval=INTERVAL
    )
    (remote_write,) = config["remote_write"]
    remote_write["url"] = f"http://127.0.0.1:{receiver.port}/api/v1/write"
    config["alerting"]["alertmanagers"] = []
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["celery-exporter"]["static_configs"] = [
        {"targets": [f"127.0.0.1:{exporter.port}" for exporter in exporters]}
    ]
    return config


@contextlib.contextmanager
def replica(
    name: str,
    directory: Path,
    receiver: PrometheusServer,
    worker: WorkerProcess,
    exporters: list[ExporterProcess],
) -> Iterator[PrometheusServer]:
    """One replica, started as prometheus-ha.yml says, its rules and targets beside it."""
    directory.mkdir()
    shutil.copytree(MONITORING / "rules", directory / "rules")
    (directory / "targets").mkdir()
    (directory / "targets" / "celery-workers.json").write_text(
        f'[{{"targets": ["127.0.0.1:{worker.port}"]}}]', encoding="utf-8"
    )
    with prometheus_process(
        directory,
        replica_config(receiver, exporters),
        "--enable-feature=expand-external-labels",
        env={**os.environ, "PROMETHEUS_REPLICA": name},
    ) as server:
        yield server


def as_counts(expr: str) -> str:
    """A rule's expression over the counters themselves instead of their 5 m rates."""
    return re.sub(r"rate\((celery_task_\w+_total)\[5m\]\)", r"\1", expr)


def values(
    server: PrometheusServer, expr: str, labels: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
        for sample in server.query(expr)
    }


def series_labels(record: str) -> tuple[str, ...]:
    """The labels a task-rate rule keeps."""
    return ("exception", "name", "queue_name") if "exception" in record else ("name", "queue_name")


def expected_counts(record: str, queues: list[str]) -> dict[tuple[str, ...], float]:
    """What a task-rate rule must count, per (name, queue_name) or (exception, name, queue)."""
    outcome = record.split(":")[1].removeprefix("celery_task_")
    counts: dict[tuple[str, ...], float] = {}
    for queue in queues:
        for name, want in MIX_EXPECTED.items():
            if outcome == "failed":
                counts.update({(exc, name, queue): n for exc, n in want.failures})
            else:  # every outcome's counter exists once the task was seen, 0 or not
                counts[name, queue] = getattr(want, outcome, 0)
    return counts


@pytest.mark.slow
def test_two_replicas_and_two_exporters_count_each_task_once_on_the_receiver(
    own_redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    broker = own_redis_broker
    with (
        running_worker(broker, tmp_path) as instrumented,
        plain_worker(broker, tmp_path) as evented,
    ):
        queues = [instrumented.queue, evented.queue]
        with (
            running_exporter_for(broker, tmp_path) as exporter_1,
            running_exporter_for(broker, tmp_path) as exporter_2,
            prometheus_process(
                tmp_path / "receiver", {"global": {}}, "--web.enable-remote-write-receiver"
            ) as receiver,
        ):
            exporters = [exporter_1, exporter_2]
            for exporter in exporters:
                exporter.wait_until_counting(evented)
            with (
                replica("a", tmp_path / "a", receiver, instrumented, exporters),
                replica("b", tmp_path / "b", receiver, instrumented, exporters),
            ):
                for queue in queues:
                    send_mix(client_app_for(broker, queue))
                wait_for_every_copy(receiver, copies=len(REPLICAS) * (1 + len(exporters)))
                wait_for_recorded_series(receiver)

                assert_the_receiver_holds_each_count_six_times(receiver, instrumented, evented)
                assert_recorded_series_differ_only_by_replica(receiver, queues)
                assert_rules_count_each_task_once(receiver, queues)


def wait_for_every_copy(receiver: PrometheusServer, copies: int) -> None:
    """Until every (replica, scraped target) copy of the counts holds all outcomes."""
    outcomes = (
        'sum by (replica, instance) ({__name__=~"celery_task_(succeeded|failed|retried)_total"})'
    )

    def complete() -> bool:
        found = receiver.query(outcomes)
        return len(found) == copies and all(
            float(sample["value"][1]) == OUTCOMES for sample in found
        )

    wait_for(complete, timeout=60, what=f"{copies} copies of {OUTCOMES} outcomes on the receiver")


def wait_for_recorded_series(receiver: PrometheusServer) -> None:
    def recorded() -> bool:
        return all(
            {sample["metric"]["replica"] for sample in receiver.query(record)} == set(REPLICAS)
            for record in TASK_RATE_RULES
        )

    wait_for(recorded, timeout=60, what="both replicas' recorded series on the receiver")


def assert_the_receiver_holds_each_count_six_times(
    receiver: PrometheusServer, instrumented: WorkerProcess, evented: WorkerProcess
) -> None:
    copies = values(
        receiver,
        "count by (cluster, replica, job, hostname) "
        f'(celery_task_succeeded_total{{name="{T}noop"}})',
        ("cluster", "replica", "job", "hostname"),
    )
    assert copies == {
        ("celery-production", replica, job, worker.hostname): count
        for replica in REPLICAS
        for job, worker, count in (
            ("celery-worker", instrumented, 1),
            ("celery-exporter", evented, 2),
        )
    }


def assert_recorded_series_differ_only_by_replica(
    receiver: PrometheusServer, queues: list[str]
) -> None:
    for record in TASK_RATE_RULES:
        by_series: dict[frozenset[tuple[str, str]], list[str]] = {}
        for sample in receiver.query(record):
            labels = dict(sample["metric"])
            replica_name = labels.pop("replica")
            assert labels.pop("__name__") == record
            assert labels.pop("cluster") == "celery-production"
            by_series.setdefault(frozenset(labels.items()), []).append(replica_name)
        kept = sorted(
            tuple(dict(series)[label] for label in series_labels(record)) for series in by_series
        )
        assert kept == sorted(expected_counts(record, queues)), record
        assert all(sorted(replicas) == list(REPLICAS) for replicas in by_series.values()), record


def assert_rules_count_each_task_once(receiver: PrometheusServer, queues: list[str]) -> None:
    for record, expr in TASK_RATE_RULES.items():
        counted = values(receiver, as_counts(expr), series_labels(record))
        assert counted == expected_counts(record, queues), record
