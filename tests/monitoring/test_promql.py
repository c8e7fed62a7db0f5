"""The PromQL helpers the monitoring tests rely on."""

from __future__ import annotations

import pytest

from tests.monitoring.promql import (
    exposed_names,
    metric_names,
    needs_exporter,
    needs_redis,
    substitute,
)


def test_metric_names_skip_functions_keywords_labels_strings_and_durations() -> None:
    expr = (
        'sum by (name, le) (rate(foo_total{queue_name=~"a|b", x!="up"}[5m]))'
        " / on (name) group_left (le) max without (instance) (bar:baz:rate5m offset 1h)"
        " > bool 1e3 or vector(0) unless histogram_quantile(0.9, qux_bucket[5m:1m])"
    )
    assert metric_names(expr) == {"foo_total", "bar:baz:rate5m", "qux_bucket"}


def test_exposed_names_spell_out_histogram_series() -> None:
    names = exposed_names()
    assert "celery_task_runtime_seconds_bucket" in names
    assert "celery_task_runtime_seconds_count" in names
    assert "celery_task_runtime_seconds" not in names
    assert "celery_task_failed_total" in names


def test_exporter_only_queries_are_told_apart_from_worker_ones() -> None:
    assert needs_exporter("sum(queue_name:celery_queue_length:max)")
    assert needs_exporter("max by (hostname) (celery_worker_up)")
    # Through a record computed from another record.
    assert needs_exporter("queue_name:celery_alert_queue_backlog_messages:threshold")
    assert not needs_exporter("hostname:celery_worker_tasks_active:max")
    assert not needs_exporter('sum(rate(celery_task_started_total{name=~"$task"}[1m]))')


def test_redis_only_queries_are_told_apart_from_other_exporter_ones() -> None:
    assert needs_redis("queue_name:celery_queue_latency_seconds:max")
    assert needs_redis("max by (queue_name) (celery_queue_unacked_messages)")
    # Through a record computed from another record.
    assert needs_redis("queue_name:celery_alert_queue_unacked_oldest_seconds:threshold")
    assert not needs_redis("queue_name:celery_queue_length:max")
    assert not needs_redis("hostname_name_queue_name:celery_task_longest_running_seconds:max")


def test_substitute_fills_grafana_variables_and_refuses_unknown_ones() -> None:
    values = {"task": "t", "__rate_interval": "1m"}
    assert substitute('x{name=~"$task"}[$__rate_interval] ${task}', values) == (
        'x{name=~"t"}[1m] t'
    )
    with pytest.raises(AssertionError, match="unknown Grafana variable"):
        substitute("x[$__interval]", values)
