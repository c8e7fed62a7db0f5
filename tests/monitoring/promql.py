"""PromQL helpers for the monitoring tests: the rules and dashboards as data, the metric
names an expression reads, Grafana variables, and validation with promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from celery_prom.metrics import CATALOGUE, MetricType, ServedBy
from tests.support import REPO

MONITORING = REPO / "monitoring"
DEPLOYING = REPO / "docs" / "deploying.md"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
RECORDING_RULES = MONITORING / "rules" / "celery-recording.yml"
ALERT_RULES = MONITORING / "rules" / "celery-alerts.yml"
THRESHOLDS_EXAMPLE = MONITORING / "thresholds.example.yml"
DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
#: Series Prometheus itself makes.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
#: Queue facts the exporter reads from Redis only (and the unacked count from SQS), so a
#: deployment on RabbitMQ has no data for them.
REDIS_ONLY = frozenset(
    {
        "celery_queue_latency_seconds",
        "celery_queue_unacked_messages",
        "celery_queue_unacked_oldest_seconds",
    }
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_TOKEN = re.compile(
    r"""
      "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | `[^`]*`   # strings
    | \[[^\]]*\]                                       # range or subquery
    | \{[^}]*\}                                        # label matchers
    | \d[\w.]*                                         # number or duration
    | [A-Za-z_:][A-Za-z0-9_:]*                         # identifier
    | \S
    """,
    re.VERBOSE,
)
#: Keywords followed by a parenthesised list of label names.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        # Aggregations may be followed by ``by (...)`` instead of their argument.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (not functions, keywords or labels)."""
    tokens = [token for token in _TOKEN.findall(expr) if not token.isspace()]
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in _LABEL_LISTS and following == "(":
            index = tokens.index(")", index)
        elif (
            re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token)
            and following != "("
            and (token.lower() not in _KEYWORDS)
        ):
            names.add(token)
        index += 1
    return names


def exposed_names(served_by: frozenset[ServedBy] = frozenset(ServedBy)) -> set[str]:
    """Series names celery-prom exposes (histograms as their _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in CATALOGUE:
        if family.served_by not in served_by:
            continue
        if family.type is MetricType.HISTOGRAM:
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
    return names


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def yaml_examples(page: Path) -> list[Any]:
    """The YAML code blocks of a Markdown page, parsed."""
    blocks = re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    return [yaml.safe_load(block) for block in blocks]


def rules(*paths: Path) -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the given rule files, in order."""
    return [
        rule for path in paths for group in load_yaml(path)["groups"] for rule in group["rules"]
    ]


def recorded_names(*paths: Path) -> set[str]:
    return {rule["record"] for rule in rules(*paths) if "record" in rule}


def alerts(*paths: Path) -> list[dict[str, Any]]:
    return [rule for rule in rules(*paths) if "alert" in rule]


def with_records_from(sources: set[str]) -> set[str]:
    """``sources`` and every record computed from them, directly or through other records."""
    names = set(sources)
    records = [rule for rule in rules(*RULE_FILES) if "record" in rule]
    while derived := {
        rule["record"]
        for rule in records
        if rule["record"] not in names and metric_names(rule["expr"]) & names
    }:
        names |= derived
    return names


def exporter_names() -> set[str]:
    """Series only the exporter provides, and the records computed from them."""
    return with_records_from(exposed_names(frozenset({ServedBy.EXPORTER})))


def needs_exporter(expr: str) -> bool:
    return bool(metric_names(expr) & exporter_names())


def needs_redis(expr: str) -> bool:
    """Whether ``expr`` reads queue facts the exporter has on Redis only."""
    return bool(metric_names(expr) & with_records_from(set(REDIS_ONLY)))


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of a dashboard: panel targets and query variables' selectors."""
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
            assert match, f"unexpected variable query {variable['query']!r}"
            queries.append(match.group(1))
    return queries


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARDS}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana's ``$name`` and ``${name}`` variables; every one must be known."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def promtool_check(exprs: list[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on the expressions wrapped as recording rules (JSON is YAML)."""
    path = directory / "expressions.rules.json"
    group = {
        "name": "expressions",
        "rules": [
            {"record": f"expression_{index}", "expr": expr} for index, expr in enumerate(exprs)
        ],
    }
    path.write_text(json.dumps({"groups": [group]}), encoding="utf-8")
    return subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def promtool_check_config(
    directory: Path, name: str = "prometheus.yml"
) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` run in ``directory``, where the config's relative paths start."""
    return subprocess.run(
        ["promtool", "check", "config", name],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
