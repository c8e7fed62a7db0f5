"""The example Prometheus configurations: promtool accepts them and they scrape what the
rules expect."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.monitoring.promql import MONITORING, RULE_FILES, load_yaml, promtool_check_config

CONFIGS = ["prometheus.yml", "prometheus-ha.yml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_promtool_accepts_the_config(name: str) -> None:
    result = promtool_check_config(MONITORING, name)
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files are found and checked too.
    for path in RULE_FILES:
        assert f"Checking rules/{path.name}" in result.stdout


@pytest.mark.parametrize("name", CONFIGS)
def test_config_scrapes_workers_exporter_and_beat_every_15s(name: str) -> None:
    config = load_yaml(MONITORING / name)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"celery-worker", "celery-exporter", "celery-beat"}
    assert jobs["celery-worker"]["file_sd_configs"][0]["files"] == ["targets/celery-workers*.json"]
    assert {f"rules/{path.name}" for path in RULE_FILES} <= set(config["rule_files"])
    assert config["alerting"]["alertmanagers"]


def test_example_worker_targets_are_file_sd() -> None:
    groups: list[dict[str, Any]] = json.loads(
        (MONITORING / "targets" / "celery-workers.json").read_text(encoding="utf-8")
    )
    assert all(group["targets"] for group in groups)
    assert all(target.endswith(":9808") for group in groups for target in group["targets"])


def test_ha_replicas_differ_only_in_the_replica_label() -> None:
    config = load_yaml(MONITORING / "prometheus-ha.yml")
    assert set(config["global"]["external_labels"]) == {"cluster", "replica"}
    # Both replicas send the same alerts; without the replica label Alertmanager merges them.
    relabel = config["alerting"]["alert_relabel_configs"]
    assert {"action": "labeldrop", "regex": "replica"} in relabel
    assert config["remote_write"][0]["url"]
