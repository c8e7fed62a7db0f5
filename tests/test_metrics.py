"""The metric catalogue: the public names, their types and labels, Prometheus' conventions."""

from __future__ import annotations

import re

import pytest

from celery_prom import metrics
from celery_prom.metrics import CATALOGUE, Family, MetricType

TASK = ("name", "hostname", "queue_name")

# The public contract other people's dashboards and alerts depend on: renaming or relabelling
# any of these is a breaking change.
PUBLIC_FAMILIES = {
    "celery_task_received_total": ("counter", TASK),
    "celery_task_started_total": ("counter", TASK),
    "celery_task_succeeded_total": ("counter", TASK),
    "celery_task_failed_total": ("counter", (*TASK, "exception")),
    "celery_task_retried_total": ("counter", TASK),
    "celery_task_revoked_total": ("counter", TASK),
    "celery_task_rejected_total": ("counter", TASK),
    "celery_task_runtime_seconds": ("histogram", TASK),
    "celery_task_queue_wait_seconds": ("histogram", TASK),
    "celery_worker_tasks_active": ("gauge", ("hostname",)),
    "celery_task_sent_total": ("counter", ("name", "queue_name")),
    "celery_queue_length": ("gauge", ("queue_name",)),
    "celery_queue_latency_seconds": ("gauge", ("queue_name",)),
    "celery_queue_unacked_messages": ("gauge", ("queue_name",)),
    "celery_queue_unacked_oldest_seconds": ("gauge", ("queue_name",)),
    "celery_queue_delayed_messages": ("gauge", ("queue_name",)),
    "celery_active_consumer_count": ("gauge", ("queue_name",)),
    "celery_worker_up": ("gauge", ("hostname",)),
    "celery_prom_broker_up": ("gauge", ()),
    "celery_beat_tasks_sent_total": ("counter", ("entry", "name")),
    "celery_beat_send_errors_total": ("counter", ("entry", "name")),
    "celery_beat_lateness_seconds": ("histogram", ("entry",)),
    "celery_beat_next_run_timestamp_seconds": ("gauge", ("entry",)),
    "celery_beat_last_run_timestamp_seconds": ("gauge", ("entry",)),
    "celery_beat_tick_timestamp_seconds": ("gauge", ()),
    "celery_beat_entries": ("gauge", ()),
    "celery_beat_info": ("gauge", ("scheduler",)),
}

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def test_public_families_keep_their_names_types_and_labels() -> None:
    catalogue = {family.name: (family.type.value, family.labels) for family in CATALOGUE}

    assert {name: catalogue.get(name) for name in PUBLIC_FAMILIES} == PUBLIC_FAMILIES


def test_every_name_is_unique_and_in_the_projects_namespace() -> None:
    names = [family.name for family in CATALOGUE]

    assert len(names) == len(set(names))
    assert all(_NAME.fullmatch(name) and name.startswith("celery_") for name in names)


@pytest.mark.parametrize("family", CATALOGUE, ids=lambda family: family.name)
def test_family_follows_prometheus_conventions(family: Family) -> None:
    assert (family.type is MetricType.COUNTER) == family.name.endswith("_total")
    if family.type is MetricType.HISTOGRAM:
        assert family.name.endswith("_seconds")
    assert all(_LABEL.fullmatch(label) and not label.startswith("__") for label in family.labels)
    assert "le" not in family.labels
    assert len(set(family.labels)) == len(family.labels)
    assert family.help.endswith(".")


def test_openmetrics_name_drops_total_from_counters_only() -> None:
    assert metrics.TASK_RECEIVED.openmetrics_name == "celery_task_received"
    assert metrics.QUEUE_LENGTH.openmetrics_name == "celery_queue_length"
    assert metrics.TASK_RUNTIME.openmetrics_name == "celery_task_runtime_seconds"


@pytest.mark.parametrize(
    "buckets", [metrics.DEFAULT_RUNTIME_BUCKETS, metrics.DEFAULT_QUEUE_WAIT_BUCKETS]
)
def test_default_buckets_rise_strictly_from_milliseconds_to_an_hour(
    buckets: tuple[float, ...],
) -> None:
    assert list(buckets) == sorted(set(buckets))
    assert (buckets[0], buckets[-1]) == (0.005, 3600.0)
