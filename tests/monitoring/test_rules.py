"""The recording and alert rules: promtool accepts them, its unit tests pass, every alert is
documented and tested, and every expression reads only series that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.monitoring.promql import (
    ALERT_RULES,
    MONITORING,
    PROMETHEUS_SERIES,
    RECORDING_RULES,
    RULE_FILES,
    THRESHOLDS_EXAMPLE,
    alerts,
    exposed_names,
    load_yaml,
    metric_names,
    recorded_names,
    rules,
)
from tests.support import REPO

UNIT_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning"}
ALL_RULE_FILES = (*RULE_FILES, THRESHOLDS_EXAMPLE)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=MONITORING,
    )


def test_rule_files_are_the_recording_and_alert_rules() -> None:
    assert RULE_FILES == [ALERT_RULES, RECORDING_RULES]


@pytest.mark.parametrize("path", ALL_RULE_FILES, ids=lambda path: path.name)
def test_promtool_accepts_the_rule_file(path: Path) -> None:
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_every_alert_has_a_severity_summary_description_and_runbook() -> None:
    for alert in alerts(*RULE_FILES):
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        assert set(alert["annotations"]) == {"summary", "description", "runbook"}, alert["alert"]
        assert alert["alert"].startswith("Celery"), "the dashboards select alerts by prefix"


def test_every_alert_has_unit_tests_where_it_fires_and_where_it_stays_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in alerts(*RULE_FILES)}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


@pytest.mark.parametrize(
    "rule", rules(*ALL_RULE_FILES), ids=lambda rule: rule.get("record") or rule["alert"]
)
def test_rule_reads_only_exposed_or_recorded_series(rule: dict[str, str]) -> None:
    known = exposed_names() | recorded_names(*ALL_RULE_FILES) | PROMETHEUS_SERIES
    assert metric_names(rule["expr"]) - known == set()


def test_recorded_series_follow_the_level_metric_operations_convention() -> None:
    for name in recorded_names(*ALL_RULE_FILES):
        if name.startswith("celery_alert:"):
            # Threshold settings, not aggregations: celery_alert:<setting>:threshold.
            assert re.fullmatch(r"celery_alert:[a-z0-9_]+:threshold", name)
            continue
        level, metric, operations = name.split(":")
        assert re.fullmatch(r"[a-z_]*", level), name
        assert metric.startswith("celery_"), name
        assert not metric.endswith("_total"), f"{name}: drop _total after rate()"
        assert re.fullmatch(r"[a-z0-9_]+", operations), name


def test_threshold_overrides_record_defaults_with_one_label() -> None:
    defaults = {
        rule["record"]: rule
        for rule in rules(ALERT_RULES)
        if rule.get("record", "").startswith("celery_alert:")
    }
    assert set(defaults) == {
        "celery_alert:queue_backlog_messages:threshold",
        "celery_alert:queue_wait_p95_seconds:threshold",
        "celery_alert:task_failure_ratio:threshold",
        "celery_alert:beat_entry_lateness_seconds:threshold",
        "celery_alert:beat_entry_overdue_seconds:threshold",
        "celery_alert:beat_tick_age_seconds:threshold",
        "celery_alert:queue_latency_seconds:threshold",
        "celery_alert:queue_unacked_oldest_seconds:threshold",
        "celery_alert:task_running_seconds:threshold",
        "celery_alert:pool_process_memory_bytes:threshold",
    }
    for override in rules(THRESHOLDS_EXAMPLE):
        assert override["record"] in defaults
        assert len(override["labels"]) == 1
        assert set(override["labels"]) <= {"queue_name", "name", "entry"}


def test_the_monitoring_page_documents_every_alert() -> None:
    page = (REPO / "docs" / "monitoring.md").read_text(encoding="utf-8")
    for alert in alerts(*RULE_FILES):
        assert f"`{alert['alert']}`" in page, alert["alert"]
