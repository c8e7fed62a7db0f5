"""The Grafana dashboards: in sync with their generator, importable, and every query is
valid PromQL that reads only series celery-prom exposes or records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.monitoring.promql import (
    DASHBOARDS,
    PROMETHEUS_SERIES,
    RULE_FILES,
    dashboard_queries,
    exposed_names,
    load_dashboards,
    metric_names,
    promtool_check,
    recorded_names,
    substitute,
)
from tools.dashboards.__main__ import OUTPUT, stale, write

#: Values for Grafana's variables when a query is checked outside Grafana.
VARIABLES = {
    "__rate_interval": "1m",
    "__range": "1h",
    "task": ".*",
    "queue": ".*",
    "worker": ".*",
}
OVERVIEW = "celery-overview.json"
TASK = "celery-task.json"


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def all_queries() -> list[tuple[str, str]]:
    return [
        (name, query)
        for name, dashboard in load_dashboards().items()
        for query in dashboard_queries(dashboard)
    ]


def test_committed_dashboards_are_the_generated_ones() -> None:
    assert [path.name for path in DASHBOARDS] == [OVERVIEW, TASK]
    assert DASHBOARDS[0].parent == OUTPUT
    assert stale(OUTPUT) == [], "run: python -m tools.dashboards"


def test_a_hand_edited_dashboard_is_reported_stale(tmp_path: Path) -> None:
    write(tmp_path)
    assert stale(tmp_path) == []
    edited = tmp_path / TASK
    edited.write_text(edited.read_text().replace("Celery / Task", "Edited"))
    (tmp_path / OVERVIEW).unlink()
    assert stale(tmp_path) == [OVERVIEW, TASK]


@pytest.mark.parametrize("name", [OVERVIEW, TASK])
def test_every_panel_and_query_reads_the_datasource_variable(name: str) -> None:
    dashboard = load_dashboards()[name]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == reference, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == reference for target in panel["targets"])
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == reference


@pytest.mark.parametrize("name", [OVERVIEW, TASK])
def test_panels_have_unique_ids_and_fit_the_grid_without_overlap(name: str) -> None:
    dashboard = load_dashboards()[name]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
    assert dashboard["uid"].startswith("celery-prom-")
    assert dashboard["title"].startswith("Celery / ")
    assert dashboard["schemaVersion"] >= 36


def test_task_dashboard_filters_by_task_queue_and_worker() -> None:
    dashboard = load_dashboards()[TASK]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "task", "queue", "worker"]
    for name in ("task", "queue", "worker"):
        assert variables[name]["multi"]
        assert variables[name]["includeAll"]
    task_queries = [
        target["expr"]
        for panel in panels(dashboard)
        for target in panel["targets"]
        if "celery_task_" in target["expr"]
    ]
    assert task_queries
    for expr in task_queries:
        assert 'name=~"$task", queue_name=~"$queue", hostname=~"$worker"' in expr, expr


def test_task_dashboard_marks_exemplars_on_the_latency_panels() -> None:
    dashboard = load_dashboards()[TASK]
    with_exemplars = {
        panel["title"]: metric_names(target["expr"])
        for panel in panels(dashboard)
        for target in panel["targets"]
        if target.get("exemplar")
    }

    runtime, queue_wait = (f"celery_task_{h}_seconds_bucket" for h in ("runtime", "queue_wait"))
    assert with_exemplars == {
        "Runtime": {runtime},
        "Queue wait": {queue_wait},
        "Runtime distribution": {runtime},
        "Queue wait distribution": {queue_wait},
    }


def test_overview_shows_what_an_operator_needs() -> None:
    names = set().union(
        *(metric_names(query) for query in dashboard_queries(load_dashboards()[OVERVIEW]))
    )
    outcomes = ("received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
    assert {f"name_queue_name:celery_task_{outcome}:rate5m" for outcome in outcomes} <= names
    assert {
        "exception_name_queue_name:celery_task_failed:rate5m",
        "name_queue_name_le:celery_task_runtime_seconds_bucket:rate5m",
        "name_queue_name_le:celery_task_queue_wait_seconds_bucket:rate5m",
        "queue_name:celery_queue_length:max",
        "celery_worker_up",
        "up",
        "hostname:celery_worker_tasks_active:max",
        "entry_name:celery_beat_tasks_sent:rate5m",
        "entry_name:celery_beat_send_errors:rate5m",
        "entry:celery_beat_lateness_seconds:mean5m",
        "entry:celery_beat_next_run_timestamp_seconds:max",
        "celery_beat_tick_timestamp_seconds",
        "queue_name:celery_queue_latency_seconds:max",
        "queue_name:celery_queue_unacked_messages:max",
        "queue_name:celery_queue_unacked_oldest_seconds:max",
        "hostname_name_queue_name:celery_task_longest_running_seconds:max",
        "hostname_process_index:celery_worker_pool_process_resident_memory_bytes:max",
        "hostname:celery_worker_pool_processes_started:rate5m",
        "ALERTS",
    } <= names


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    queries = [substitute(query, VARIABLES) for _, query in all_queries()]
    result = promtool_check(queries, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promql_check_rejects_a_broken_query(tmp_path: Path) -> None:
    result = promtool_check(["sum(rate(celery_task_started_total[1m])"], tmp_path)
    assert result.returncode != 0


@pytest.mark.parametrize(("dashboard", "query"), all_queries())
def test_dashboard_query_reads_only_exposed_or_recorded_series(dashboard: str, query: str) -> None:
    known = exposed_names() | recorded_names(*RULE_FILES) | PROMETHEUS_SERIES
    assert metric_names(query), query
    assert metric_names(query) - known == set()
