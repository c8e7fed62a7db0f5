"""Faults inside celery-prom: contained, counted, shown, and never the end of a worker.

The unit tests cover ``Faults``, ``ContainedCollector`` and ``describe_error``; the worker
tests make each of celery-prom's parts fail inside a real worker
(``tests/apps/cptest_faults.py``) and check that it still runs a known batch of tasks to
completion.
"""

from __future__ import annotations

import json
import logging
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from celery_prom import faults
from celery_prom.faults import ContainedCollector, Faults, describe_error
from tests.support import (
    Broker,
    WorkerProcess,
    http_get,
    load_test_app,
    running_worker,
    wait_for,
)

NOOPS = 10
FAILURES = 3
#: Each task of the batch makes three task events: received, started, then its outcome.
EVENTS_PER_TASK = 3


def test_errors_are_described_on_one_masked_line() -> None:
    error = OSError("Error 111 connecting to redis://:pw@h:1/0.\nMore detail")
    assert describe_error(error) == "OSError: Error 111 connecting to redis://:**@h:1/0."
    assert describe_error(TimeoutError()) == "TimeoutError"


def test_an_error_is_counted_by_component_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = Faults()
    with caplog.at_level(logging.ERROR, logger="celery_prom.faults"):
        for attempt in range(3):
            with recorded.contained(faults.TAP):
                raise ValueError(f"attempt {attempt}")
        with recorded.contained(faults.SCRAPE):
            raise KeyError("x")

    assert [record.getMessage().split(" failed")[0] for record in caplog.records] == [
        "celery-prom: tap",
        "celery-prom: scrape",
    ]
    assert recorded.reasons() == {"tap": "ValueError: attempt 2", "scrape": "KeyError: 'x'"}
    registry = CollectorRegistry()
    registry.register(recorded)
    assert registry.get_sample_value("celery_prom_errors_total", {"component": "tap"}) == 3
    assert registry.get_sample_value("celery_prom_errors_total", {"component": "scrape"}) == 1


def test_a_resolved_component_keeps_its_count_and_loses_its_reason() -> None:
    recorded = Faults()
    with recorded.contained(faults.TAP_INSTALL):
        raise AttributeError("scheduled_requests")
    recorded.resolved(faults.TAP_INSTALL)

    assert recorded.reasons() == {}
    assert [sample.value for metric in recorded.collect() for sample in metric.samples] == [1]


def test_errors_another_process_recorded_are_mirrored_without_counting_twice() -> None:
    recorded = Faults()
    with recorded.contained(faults.BEAT):
        raise ValueError("in this process")

    recorded.mirror(faults.BEAT, 3, "KeyError: in the beat process")
    recorded.mirror(faults.BEAT, 3, "KeyError: in the beat process")
    recorded.mirror(faults.BEAT, 2, "TypeError: an older report")

    assert recorded.counts() == {"beat": 3}
    assert recorded.reasons() == {"beat": "KeyError: in the beat process"}


def test_reasons_mask_broker_passwords() -> None:
    recorded = Faults()
    with recorded.contained(faults.STARTUP):
        raise ConnectionError("cannot reach redis://:hunter2@cache:6379/0")

    assert "hunter2" not in recorded.reasons()["startup"]


def test_a_failing_collector_leaves_out_only_its_own_families() -> None:
    class Failing:
        def collect(self) -> Iterator[Metric]:
            yield GaugeMetricFamily("partial", "yielded before the error", value=1)
            raise RuntimeError("broken")

    class Working:
        def collect(self) -> Iterator[Metric]:
            yield GaugeMetricFamily("fine", "still served", value=2)

    recorded = Faults()
    registry = CollectorRegistry()
    registry.register(ContainedCollector(Failing(), recorded))
    registry.register(ContainedCollector(Working(), recorded))

    assert registry.get_sample_value("fine") == 2
    assert registry.get_sample_value("partial") is None
    assert recorded.reasons() == {"scrape": "RuntimeError: broken"}


# Each part made to fail, the pool it runs under, and what the worker then shows.
FAULT_CASES = [
    pytest.param("startup", "prefork", id="startup-prefork"),
    pytest.param("tap_install", "prefork", id="tap_install-prefork"),
    pytest.param("tap", "prefork", id="tap-prefork"),
    # task_failure reaches the main process's receiver for every failure only under solo.
    pytest.param("signal", "solo", id="signal-solo"),
    pytest.param("scrape", "threads", id="scrape-threads"),
    pytest.param("multiprocess", "prefork", id="multiprocess-prefork"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "pool"), FAULT_CASES)
def test_the_worker_runs_every_task_whatever_part_of_celery_prom_fails(
    fault: str, pool: str, redis_broker: Broker, tmp_path: Path
) -> None:
    env = {"CPTEST_FAULT": fault}
    if fault == "multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    with running_worker(
        redis_broker, tmp_path, pool=pool, app_module="cptest_faults", env=env, wait=False
    ) as worker:
        wait_for(worker.is_ready, what="ready")
        ids = _send_batch(redis_broker, worker.queue)
        wait_for(
            lambda: _finished(worker, ids) == len(ids) or worker.assert_alive(),
            what=f"all {len(ids)} tasks to finish",
        )
        if fault != "startup":  # the endpoint never started
            _check_endpoint(fault, worker)

    assert worker.process.returncode == 0
    assert f"celery-prom: {fault} failed" in worker.output()


def _send_batch(broker: Broker, queue: str) -> list[str]:
    app = load_test_app(broker, queue)
    ids = [app.send_task("cptest_tasks.noop").id for _ in range(NOOPS)]
    ids += [app.send_task("cptest_tasks.fail", ("ValueError",)).id for _ in range(FAILURES)]
    return ids


def _finished(worker: WorkerProcess, ids: list[str]) -> int:
    """Tasks of ``ids`` whose end the worker logged (Celery's own log, not celery-prom's)."""
    lines = [line for line in worker.output().splitlines() if "succeeded in" in line]
    lines += [line for line in worker.output().splitlines() if "raised unexpected" in line]
    return sum(1 for task_id in ids if any(f"[{task_id}]" in line for line in lines))


def _check_endpoint(fault: str, worker: WorkerProcess) -> None:
    errors = worker.wait_for_scrape(
        lambda s: bool(s.value("celery_prom_errors_total", component=fault)),
        what=f"{fault} errors",
    )
    health = _health(worker.port)
    if fault == "tap_install":
        assert errors.value("celery_prom_errors_total", component=fault) == 1
        assert errors.value("celery_task_received_total", **_task(worker, "noop")) is None
        assert health["healthy"] is False
        assert health["checks"]["tap"].startswith("not installed: AttributeError")
        return
    assert health["healthy"] is True
    assert health["checks"]["errors"][fault] == "RuntimeError: injected fault"
    if fault == "tap":  # nothing was recorded: every task event failed
        total = (NOOPS + FAILURES) * EVENTS_PER_TASK
        assert errors.value("celery_prom_errors_total", component=fault) == total
        return
    scrape = worker.scrape()
    assert scrape.value("celery_task_succeeded_total", **_task(worker, "noop")) == NOOPS
    failed = {**_task(worker, "fail"), "exception": "ValueError"}
    assert scrape.value("celery_task_failed_total", **failed) == FAILURES
    if fault == "signal":
        assert scrape.value("celery_prom_errors_total", component=fault) == FAILURES
    if fault == "scrape":
        assert scrape.value("celery_worker_tasks_active", hostname=worker.hostname) is None


def _task(worker: WorkerProcess, name: str) -> dict[str, str]:
    return {"name": f"cptest_tasks.{name}", "hostname": worker.hostname, "queue_name": worker.queue}


def _health(port: int) -> Any:
    try:
        return json.loads(http_get(f"http://127.0.0.1:{port}/health"))
    except urllib.error.HTTPError as unhealthy:
        return json.loads(unhealthy.read())
