"""The Kubernetes manifests: kustomize renders them, the core objects are valid Kubernetes,
the monitors scrape what the rules expect, and the PrometheusRule is monitoring/rules/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, latest_version

from tests.monitoring.promql import DEPLOYING, MONITORING, RULE_FILES, load_yaml, yaml_examples
from tools.prometheus_rule import OUTPUT, render, stale

KUBERNETES = MONITORING / "kubernetes"
#: The oldest and newest Kubernetes versions kubernetes-validate has schemas for.
VERSIONS = [all_versions()[0], latest_version()]


def rendered() -> dict[tuple[str, str], dict[str, Any]]:
    """``kubectl kustomize`` of the directory: each object by (kind, name)."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {
        (doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(result.stdout)
    }


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return rendered()


def exporter_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment", "celery-exporter"]["spec"]["template"]["spec"][
        "containers"
    ]
    return container  # type: ignore[no-any-return]


def test_kustomize_renders_the_exporter_the_monitors_and_the_rules(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    assert sorted(objects) == [
        ("Deployment", "celery-exporter"),
        ("PodMonitor", "celery-beat"),
        ("PodMonitor", "celery-worker"),
        ("PrometheusRule", "celery-prom"),
        ("Service", "celery-exporter"),
        ("ServiceMonitor", "celery-exporter"),
    ]
    for obj in objects.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "celery-prom"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["Deployment", "Service"])
def test_core_objects_are_valid_kubernetes(
    objects: dict[tuple[str, str], dict[str, Any]], kind: str, version: str
) -> None:
    kubernetes_validate.validate(objects[kind, "celery-exporter"], version, strict=True)


def test_validation_rejects_an_unknown_field(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    service = yaml.safe_load(yaml.safe_dump(objects["Service", "celery-exporter"]))
    service["spec"]["ports"][0]["portt"] = 9808

    with pytest.raises(kubernetes_validate.ValidationError, match="'portt' was unexpected"):
        kubernetes_validate.validate(service, latest_version(), strict=True)


def test_the_exporter_runs_locked_down_with_the_broker_url_from_a_secret(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pod = objects["Deployment", "celery-exporter"]["spec"]["template"]["spec"]
    container = exporter_container(objects)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["command"] == ["celery-prom", "exporter"]
    assert {
        "name": "CELERY_PROM_BROKER_URL",
        "valueFrom": {"secretKeyRef": {"name": "celery-broker", "key": "url"}},
    } in container["env"]
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9808}]


def test_the_service_monitor_scrapes_the_exporter_service_as_job_celery_exporter(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    service = objects["Service", "celery-exporter"]
    monitor = objects["ServiceMonitor", "celery-exporter"]["spec"]
    pod_labels = objects["Deployment", "celery-exporter"]["spec"]["template"]["metadata"]["labels"]

    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert (
        service["spec"]["ports"][0]["targetPort"] == exporter_container(objects)["ports"][0]["name"]
    )
    assert endpoint["interval"] == "15s"
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "celery-exporter"}]


@pytest.mark.parametrize(
    ("name", "component"), [("celery-worker", "celery-worker"), ("celery-beat", "celery-beat")]
)
def test_pod_monitors_scrape_the_named_port_with_the_rules_job_name(
    objects: dict[tuple[str, str], dict[str, Any]], name: str, component: str
) -> None:
    monitor = objects["PodMonitor", name]["spec"]

    assert monitor["selector"] == {"matchLabels": {"app.kubernetes.io/component": component}}
    assert monitor["podMetricsEndpoints"] == [
        {
            "port": "celery-prom",
            "interval": "15s",
            "relabelings": [{"targetLabel": "job", "replacement": name}],
        }
    ]


def test_the_committed_prometheus_rule_is_the_generated_one() -> None:
    assert not stale(), "run: python -m tools.prometheus_rule"


def test_a_hand_edited_prometheus_rule_is_reported_stale(tmp_path: Path) -> None:
    edited = tmp_path / OUTPUT.name
    edited.write_text(render().replace("for: 2m", "for: 1m", 1), encoding="utf-8")

    assert stale(edited)


def test_the_prometheus_rule_holds_every_group_of_the_rule_files(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    groups = objects["PrometheusRule", "celery-prom"]["spec"]["groups"]

    assert groups == [group for path in RULE_FILES for group in load_yaml(path)["groups"]]


def test_promtool_accepts_the_prometheus_rule_groups(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    rule_file = tmp_path / "celery-prom.rules.yml"
    rule_file.write_text(yaml.safe_dump(objects["PrometheusRule", "celery-prom"]["spec"]))

    result = subprocess.run(
        ["promtool", "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    rule_count = sum(
        len(group["rules"]) for path in RULE_FILES for group in load_yaml(path)["groups"]
    )
    assert f"SUCCESS: {rule_count} rules found" in result.stdout


def documented_yaml() -> list[dict[str, Any]]:
    """The Kubernetes objects among the YAML examples of docs/deploying.md."""
    return [doc for doc in yaml_examples(DEPLOYING) if isinstance(doc, dict) and "kind" in doc]


def test_the_documented_overlay_uses_the_exported_directory_and_sets_the_exporter_image(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    # Not rendered: the kustomize in Debian's kubectl (1.20) wants bases: for directories.
    (overlay,) = [doc for doc in documented_yaml() if doc["kind"] == "Kustomization"]
    exported = re.search(r"celery-prom monitoring export \./(\S+)", DEPLOYING.read_text())
    assert exported

    assert overlay["resources"] == [f"../{exported.group(1)}/kubernetes"]
    assert [image["name"] for image in overlay["images"]] == [exporter_container(objects)["image"]]


def test_the_documented_worker_deployment_is_found_by_the_worker_pod_monitor(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    (worker,) = [doc for doc in documented_yaml() if doc["kind"] == "Deployment"]
    kubernetes_validate.validate(worker, latest_version(), strict=True)
    monitor = objects["PodMonitor", "celery-worker"]["spec"]
    template = worker["spec"]["template"]

    assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ports = [port for container in template["spec"]["containers"] for port in container["ports"]]
    assert {"name": monitor["podMetricsEndpoints"][0]["port"], "containerPort": 9808} in ports
