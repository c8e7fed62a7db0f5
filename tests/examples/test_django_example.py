"""The Django example (examples/django/), end to end: orders posted through Django's test
client, a real prefork worker of the example running the bootstep, the local Redis; and its
Prometheus configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.monitoring.promql import RULE_FILES, load_yaml
from tests.support import REPO, Broker, Scrape, WorkerProcess, running_worker

EXAMPLE = REPO / "examples" / "django"
CHARGE = "orders.tasks.charge_payment"
CONFIRM = "orders.tasks.send_order_received"

ORDERS = [
    {"email": "ada@example.com", "amount_cents": 1250, "card": "tok_visa"},
    {"email": "alan@example.com", "amount_cents": 4200, "card": "tok_mastercard"},
    # The gateway times out on the first attempt: retried once, then charged.
    {"email": "grace@example.com", "amount_cents": 990, "card": "tok_timeout"},
    # Declined: fails with CardDeclined.
    {"email": "edsger@example.com", "amount_cents": 15000, "card": "tok_declined"},
]
NOT_AN_ORDER: dict[str, Any] = {"email": "nobody", "amount_cents": 100, "card": "tok_visa"}
METRICS: dict[str, Any] = {"method": "GET", "path": "/api/v1/metrics"}
OPENMETRICS = {**METRICS, "accept": "application/openmetrics-text; version=1.0.0"}
REQUESTS: list[dict[str, Any]] = [
    *({"method": "POST", "path": "/api/v1/orders", "body": order} for order in ORDERS),
    {"method": "POST", "path": "/api/v1/orders", "body": NOT_AN_ORDER},
    METRICS,
    METRICS,
    OPENMETRICS,
]

#: What the worker must show, per family: series keyed by (name, queue_name), failures by
#: (exception, name, queue_name). Each retry is received and started again.
WORKER_COUNTS: dict[str, dict[tuple[str, ...], float]] = {
    "celery_task_received_total": {(CHARGE, "payments"): 5, (CONFIRM, "emails"): 4},
    "celery_task_started_total": {(CHARGE, "payments"): 5, (CONFIRM, "emails"): 4},
    "celery_task_succeeded_total": {(CHARGE, "payments"): 3, (CONFIRM, "emails"): 4},
    "celery_task_failed_total": {("CardDeclined", CHARGE, "payments"): 1},
    "celery_task_retried_total": {(CHARGE, "payments"): 1, (CONFIRM, "emails"): 0},
    "celery_task_revoked_total": {(CHARGE, "payments"): 0, (CONFIRM, "emails"): 0},
    "celery_task_rejected_total": {(CHARGE, "payments"): 0, (CONFIRM, "emails"): 0},
    "celery_task_runtime_seconds_count": {(CHARGE, "payments"): 3, (CONFIRM, "emails"): 4},
    # Every execution waited in a queue, retries included: the web app stamped the first
    # publish and the worker, instrumented by the same install(app), the retry's.
    "celery_task_queue_wait_seconds_count": {(CHARGE, "payments"): 5, (CONFIRM, "emails"): 4},
}
OUTCOME_FAMILIES = (
    "celery_task_succeeded_total",
    "celery_task_failed_total",
    "celery_task_retried_total",
)


@dataclass(frozen=True)
class Run:
    """What one pass of the example produced."""

    responses: list[dict[str, Any]]
    worker: WorkerProcess
    worker_scrape: Scrape


def example_env(broker: Broker) -> dict[str, str]:
    """The example's settings for this run's Redis database and key prefix."""
    return {
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "CELERY_BROKER_URL": broker.url,
        "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps(broker.transport_options),
    }


def run_django(requests: list[dict[str, Any]], env: dict[str, str]) -> list[dict[str, Any]]:
    """Make ``requests`` with Django's test client in a fresh process (see django_client)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.examples.django_client"],
        input=json.dumps(requests),
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(REPO)])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    responses: list[dict[str, Any]] = json.loads(result.stdout)
    return responses


def series(
    scrape: Scrape, family: str, hostname: str | None = None
) -> dict[tuple[str, ...], float]:
    """``family``'s series (of ``hostname`` only, if given) keyed by their other label
    values in label-name order."""
    found: dict[tuple[str, ...], float] = {}
    for labels, value in scrape.series(family).items():
        named = dict(labels)
        if hostname is None or named.pop("hostname") == hostname:
            found[tuple(label for _, label in sorted(named.items()))] = value
    return found


def outcomes(scrape: Scrape, worker: WorkerProcess) -> float:
    return sum(scrape.total(family, hostname=worker.hostname) for family in OUTCOME_FAMILIES)


@pytest.fixture(scope="module")
def run(redis_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    env = example_env(redis_broker)
    with running_worker(
        redis_broker,
        tmp_path_factory.mktemp("django-example"),
        app_module="proj",
        cwd=EXAMPLE,
        queue="payments,emails",
        env=env,
    ) as worker:
        responses = run_django(REQUESTS, env)
        expected = sum(sum(WORKER_COUNTS[family].values()) for family in OUTCOME_FAMILIES)
        worker.wait_for_scrape(
            lambda s: outcomes(s, worker) >= expected, what=f"{expected} outcomes"
        )
        scrape = worker.wait_for_scrape(
            lambda s: s.value("celery_worker_tasks_active", hostname=worker.hostname) == 0,
            what="no active tasks",
        )
        yield Run(responses, worker, scrape)


@pytest.mark.slow
def test_the_api_accepts_orders_and_refuses_what_is_not_one(run: Run) -> None:
    orders, refused = run.responses[: len(ORDERS)], run.responses[len(ORDERS)]

    assert [response["status"] for response in orders] == [202] * len(ORDERS)
    for response in orders:
        body = json.loads(response["body"])
        assert set(body) == {"order_id", "tasks"}
        assert set(body["tasks"]) == {"charge_payment", "send_order_received"}
    assert refused["status"] == 400
    assert json.loads(refused["body"]) == {"error": "email: an e-mail address is required"}


@pytest.mark.slow
def test_the_web_apps_metrics_show_its_requests_and_the_tasks_it_sent(run: Run) -> None:
    first = run.responses[len(ORDERS) + 1]
    assert first["status"] == 200
    assert first["content_type"].startswith("text/plain; version=0.0.4")
    scrape = Scrape(first["body"])

    assert series(scrape, "http_requests_total") == {
        ("POST", "api/v1/orders", "202"): 4,
        ("POST", "api/v1/orders", "400"): 1,
    }
    assert series(scrape, "http_request_duration_seconds_count") == {("POST", "api/v1/orders"): 5}
    # The refused order sent nothing.
    assert series(scrape, "celery_task_sent_total") == {
        (CHARGE, "payments"): 4,
        (CONFIRM, "emails"): 4,
    }


@pytest.mark.slow
def test_the_metrics_endpoint_counts_itself_and_speaks_openmetrics(run: Run) -> None:
    second, openmetrics = run.responses[-2], run.responses[-1]
    scrape = Scrape(second["body"])

    assert series(scrape, "http_requests_total")[("GET", "api/v1/metrics", "200")] == 1
    assert series(scrape, "http_request_duration_seconds_count") == {
        ("POST", "api/v1/orders"): 5,
        ("GET", "api/v1/metrics"): 1,
    }
    assert openmetrics["status"] == 200
    # prometheus-client 0.18 and 0.19 label the same format version 0.0.1, 0.20 on 1.0.0.
    assert openmetrics["content_type"].startswith("application/openmetrics-text; version=")
    assert openmetrics["body"].endswith("# EOF\n")
    assert (
        f'celery_task_sent_total{{name="{CHARGE}",queue_name="payments"}} 4.0\n'
        in (openmetrics["body"])
    )


@pytest.mark.slow
def test_the_worker_counts_exactly_the_tasks_the_web_app_sent(run: Run) -> None:
    counts = {
        family: series(run.worker_scrape, family, run.worker.hostname) for family in WORKER_COUNTS
    }

    assert counts == WORKER_COUNTS


def test_the_prometheus_config_scrapes_the_app_the_workers_and_the_exporter() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=EXAMPLE,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The repository's rule files, read in place.
    for path in RULE_FILES:
        assert f"Checking ../../monitoring/rules/{path.name}" in result.stdout
    jobs = {job["job_name"]: job for job in load_yaml(EXAMPLE / "prometheus.yml")["scrape_configs"]}
    assert jobs["celery-producer"]["metrics_path"] == "/api/v1/metrics"
    assert {
        name: [target for group in job["static_configs"] for target in group["targets"]]
        for name, job in jobs.items()
    } == {
        "celery-producer": ["localhost:8000"],
        "celery-worker": ["localhost:9808", "localhost:9809"],
        "celery-exporter": ["localhost:9810"],
    }
