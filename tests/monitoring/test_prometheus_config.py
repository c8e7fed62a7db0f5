"""The example Prometheus configurations: promtool accepts them and they scrape what the
rules expect."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.promql import (
    DEPLOYING,
    MONITORING,
    RULE_FILES,
    load_yaml,
    promtool_check_config,
    yaml_examples,
)

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


def http_sd_alternative() -> list[dict[str, Any]]:
    """The worker job's ``http_sd_configs`` that prometheus.yml offers in comments."""
    lines = (MONITORING / "prometheus.yml").read_text(encoding="utf-8").splitlines()
    start = lines.index("    # http_sd_configs:")
    commented = [
        lines[start],
        *itertools.takewhile(lambda line: line.startswith("    #   "), lines[start + 1 :]),
    ]
    uncommented = "\n".join(line[:4] + line[6:] for line in commented)
    alternative: list[dict[str, Any]] = yaml.safe_load(uncommented)["http_sd_configs"]
    return alternative


def with_http_sd(config: dict[str, Any], http_sd: list[dict[str, Any]]) -> dict[str, Any]:
    """``config`` whose worker job discovers its targets with ``http_sd`` instead of files."""
    for job in config["scrape_configs"]:
        if job["job_name"] == "celery-worker":
            del job["file_sd_configs"]
            job["http_sd_configs"] = http_sd
    return config


def test_the_offered_http_sd_alternative_asks_the_exporter_and_passes_promtool(
    tmp_path: Path,
) -> None:
    alternative = http_sd_alternative()
    assert alternative == [
        {"url": "http://celery-exporter:9808/sd/workers", "refresh_interval": "30s"}
    ]
    shutil.copytree(MONITORING / "rules", tmp_path / "rules")
    config = with_http_sd(load_yaml(MONITORING / "prometheus.yml"), alternative)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")

    result = promtool_check_config(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_http_sd_job_is_the_offered_one_and_its_relabeling_passes_promtool(
    tmp_path: Path,
) -> None:
    examples = yaml_examples(DEPLOYING)
    (job,) = [example[0] for example in examples if isinstance(example, list)]
    (relabeling,) = [example for example in examples if "relabel_configs" in example]

    assert job == {"job_name": "celery-worker", "http_sd_configs": http_sd_alternative()}
    config = {"scrape_configs": [{**job, **relabeling}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = promtool_check_config(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


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
