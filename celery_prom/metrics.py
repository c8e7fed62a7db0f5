"""The metric catalogue: every family celery-prom exposes, with its type, help and labels.

Names are a public contract (dashboards, alert rules and other people's scripts use them);
the metric reference in docs/metrics.md is generated from this module and tested to match it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    # Not at run time: the CLI imports the catalogue, and prometheus_client must not be
    # imported before a user's app sets PROMETHEUS_MULTIPROC_DIR (see celery_prom/__init__).
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

#: The prometheus_client family classes a catalogue entry can be built as.
MetricFamily = TypeVar(
    "MetricFamily", "CounterMetricFamily", "GaugeMetricFamily", "HistogramMetricFamily"
)


class MetricType(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class ServedBy(str, Enum):
    """Which endpoint serves a family."""

    WORKER = "worker"
    EXPORTER = "exporter"
    BOTH = "worker, exporter"
    PRODUCER = "producer"
    #: ``celery beat``'s own endpoint, and the endpoint of a worker run with ``-B``.
    BEAT = "beat"
    WORKER_AND_BEAT = "worker, beat"


@dataclass(frozen=True)
class Family:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    served_by: ServedBy
    unit: str = ""

    @property
    def openmetrics_name(self) -> str:
        """OpenMetrics names a counter family without its ``_total`` suffix."""
        if self.type is MetricType.COUNTER and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


_FAMILY_CLASSES = {
    MetricType.COUNTER: "CounterMetricFamily",
    MetricType.GAUGE: "GaugeMetricFamily",
    MetricType.HISTOGRAM: "HistogramMetricFamily",
}


def new_family(family: Family, cls: type[MetricFamily]) -> MetricFamily:
    """An empty ``cls`` named, described and labelled as the catalogue entry says."""
    if _FAMILY_CLASSES[family.type] != cls.__name__:
        raise TypeError(f"{family.name} is a {family.type.value}, not a {cls.__name__}")
    return cls(family.name, family.help, labels=family.labels, unit=family.unit)


TASK_LABELS = ("name", "hostname", "queue_name")

# Bucket bounds in seconds. Tasks range from milliseconds to an hour, so the buckets
# span that range; both are configurable (see config.py).
DEFAULT_RUNTIME_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
DEFAULT_QUEUE_WAIT_BUCKETS: tuple[float, ...] = DEFAULT_RUNTIME_BUCKETS


def bucket_bounds(buckets: Iterable[float]) -> tuple[float, ...]:
    """Histogram bucket bounds, checked: the finite ones (``+Inf`` is always the last
    bucket), at least one, increasing strictly; a ``ValueError`` says what is wrong."""
    bounds = tuple(float(b) for b in buckets if b != math.inf)
    if not bounds:
        raise ValueError("at least one finite bucket bound is needed")
    if any(math.isnan(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
        shown = ", ".join(f"{b:g}" for b in bounds)
        raise ValueError(f"bucket bounds must increase strictly: {shown}")
    return bounds


TASK_RECEIVED = Family(
    "celery_task_received_total",
    MetricType.COUNTER,
    "Task messages a worker received (one per delivery, retries included).",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_STARTED = Family(
    "celery_task_started_total",
    MetricType.COUNTER,
    "Task executions a worker started.",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_SUCCEEDED = Family(
    "celery_task_succeeded_total",
    MetricType.COUNTER,
    "Task executions that returned successfully.",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_FAILED = Family(
    "celery_task_failed_total",
    MetricType.COUNTER,
    "Task executions that failed, by exception class name.",
    (*TASK_LABELS, "exception"),
    ServedBy.BOTH,
)
TASK_RETRIED = Family(
    "celery_task_retried_total",
    MetricType.COUNTER,
    "Task executions that ended by scheduling a retry.",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_REVOKED = Family(
    "celery_task_revoked_total",
    MetricType.COUNTER,
    "Tasks revoked, terminated or expired before they could finish.",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_REJECTED = Family(
    "celery_task_rejected_total",
    MetricType.COUNTER,
    "Task messages rejected by a worker (requeued or dead-lettered).",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_REPLACED = Family(
    "celery_task_replaced_total",
    MetricType.COUNTER,
    "Task executions that ended by Task.replace (the replacement counts as an execution "
    "of its own, under its own name).",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_IGNORED = Family(
    "celery_task_ignored_total",
    MetricType.COUNTER,
    "Task executions that ended by raising Ignore, other than by Task.replace.",
    TASK_LABELS,
    ServedBy.BOTH,
)
TASK_RUNTIME = Family(
    "celery_task_runtime_seconds",
    MetricType.HISTOGRAM,
    "Run time of successful task executions.",
    TASK_LABELS,
    ServedBy.BOTH,
    unit="seconds",
)
TASK_QUEUE_WAIT = Family(
    "celery_task_queue_wait_seconds",
    MetricType.HISTOGRAM,
    "Time from publish (or from the ETA, if later) until a worker started the task.",
    TASK_LABELS,
    ServedBy.BOTH,
    unit="seconds",
)

#: Families whose series are kept in the task store, in exposition order.
TASK_COUNTERS: tuple[Family, ...] = (
    TASK_RECEIVED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_REJECTED,
    TASK_REPLACED,
    TASK_IGNORED,
)
TASK_HISTOGRAMS: tuple[Family, ...] = (TASK_RUNTIME, TASK_QUEUE_WAIT)

TASK_LONGEST_RUNNING = Family(
    "celery_task_longest_running_seconds",
    MetricType.GAUGE,
    "How long the oldest execution of the task still running on the worker has been running, "
    "at scrape time; the series exists only while one runs.",
    TASK_LABELS,
    ServedBy.WORKER,
    unit="seconds",
)
WORKER_TASKS_ACTIVE = Family(
    "celery_worker_tasks_active",
    MetricType.GAUGE,
    "Tasks the worker is executing right now.",
    ("hostname",),
    ServedBy.BOTH,
)
WORKER_TASKS_RESERVED = Family(
    "celery_worker_tasks_reserved",
    MetricType.GAUGE,
    "Tasks the worker holds but has not started (prefetched, waiting for a pool slot or an ETA).",
    ("hostname",),
    ServedBy.WORKER,
)
WORKER_POOL_PROCESSES = Family(
    "celery_worker_pool_processes",
    MetricType.GAUGE,
    "Prefork: pool processes alive; other pools: the concurrency (threads or greenlets).",
    ("hostname",),
    ServedBy.WORKER,
)
WORKER_POOL_PROCESSES_STARTED = Family(
    "celery_worker_pool_processes_started_total",
    MetricType.COUNTER,
    "Processes the prefork pool started: the first ones and every replacement (recycled by "
    "--max-tasks-per-child or --max-memory-per-child, or crashed). Prefork only.",
    ("hostname",),
    ServedBy.WORKER,
)
WORKER_POOL_PROCESS_MEMORY = Family(
    "celery_worker_pool_process_resident_memory_bytes",
    MetricType.GAUGE,
    "Resident memory of each prefork pool process, by its pool slot (0 to concurrency-1), "
    "read at scrape time. Prefork on Linux only.",
    ("hostname", "process_index"),
    ServedBy.WORKER,
    unit="bytes",
)
WORKER_INFO = Family(
    "celery_worker_info",
    MetricType.GAUGE,
    "Always 1; labels describe the worker.",
    ("hostname", "celery_version", "pool", "celery_prom_version"),
    ServedBy.WORKER,
)
WORKER_INVALID_MESSAGES = Family(
    "celery_worker_invalid_messages_total",
    MetricType.COUNTER,
    "Messages a worker discarded because they were not valid task messages.",
    ("hostname", "reason"),
    ServedBy.WORKER,
)

QUEUE_LENGTH = Family(
    "celery_queue_length",
    MetricType.GAUGE,
    "Messages ready in the broker queue (all priorities), read at scrape time.",
    ("queue_name",),
    ServedBy.EXPORTER,
)
QUEUE_LATENCY = Family(
    "celery_queue_latency_seconds",
    MetricType.GAUGE,
    "Seconds since the oldest message waiting in the queue was published (the publish time "
    "install(app) stamps; the oldest of each priority sub-queue's next message), read at "
    "scrape time; 0 for an empty queue, no series while such a message has no publish "
    "time. Redis only.",
    ("queue_name",),
    ServedBy.EXPORTER,
    unit="seconds",
)
#: Value that replaces a label value once its cardinality cap is reached.
OVERFLOW_LABEL_VALUE = "_other"

#: On Redis, the unacknowledged messages the exporter reads per scrape: the oldest ones, by
#: delivery time. The others are counted, unattributed, under ``OVERFLOW_LABEL_VALUE``.
MAX_UNACKED_READ = 1000
QUEUE_UNACKED = Family(
    "celery_queue_unacked_messages",
    MetricType.GAUGE,
    "Messages delivered to consumers and not yet acknowledged, read at scrape time. Redis: "
    "prefetched by workers or running with acks_late, by routing key; the "
    f"{MAX_UNACKED_READ:,} delivered first are attributed, those of queues not reported "
    f'and those past that bound count under queue_name="{OVERFLOW_LABEL_VALUE}" (a series '
    "only while it counts some). SQS: in flight.",
    ("queue_name",),
    ServedBy.EXPORTER,
)
QUEUE_UNACKED_OLDEST = Family(
    "celery_queue_unacked_oldest_seconds",
    MetricType.GAUGE,
    "Seconds since the oldest unacknowledged message of the queue was delivered, read at "
    "scrape time; 0 when there is none. kombu redelivers a message unacknowledged for "
    "visibility_timeout. Redis only.",
    ("queue_name",),
    ServedBy.EXPORTER,
    unit="seconds",
)
QUEUE_DELAYED = Family(
    "celery_queue_delayed_messages",
    MetricType.GAUGE,
    "Messages in the queue that are not yet available (SQS: delayed), read at scrape time.",
    ("queue_name",),
    ServedBy.EXPORTER,
)
ACTIVE_CONSUMERS = Family(
    "celery_active_consumer_count",
    MetricType.GAUGE,
    "Consumers the broker reports on the queue (RabbitMQ), read at scrape time.",
    ("queue_name",),
    ServedBy.EXPORTER,
)
WORKER_UP = Family(
    "celery_worker_up",
    MetricType.GAUGE,
    "1 while the worker's heartbeats arrive within the worker timeout, else 0.",
    ("hostname",),
    ServedBy.EXPORTER,
)
WORKER_PROCESSED = Family(
    "celery_worker_tasks_processed_total",
    MetricType.COUNTER,
    "Tasks the worker reports having processed since it started (from its heartbeats).",
    ("hostname",),
    ServedBy.EXPORTER,
)
WORKER_LAST_HEARTBEAT = Family(
    "celery_worker_last_heartbeat_timestamp_seconds",
    MetricType.GAUGE,
    "When the exporter last received a heartbeat from the worker (Unix time).",
    ("hostname",),
    ServedBy.EXPORTER,
    unit="seconds",
)

TASK_SENT = Family(
    "celery_task_sent_total",
    MetricType.COUNTER,
    "Task messages this process published (recorded in prometheus_client's default "
    "registry of any process that called install(app)).",
    ("name", "queue_name"),
    ServedBy.PRODUCER,
)

EVENTS_RECEIVED = Family(
    "celery_prom_events_received_total",
    MetricType.COUNTER,
    "Celery events handed to the recorder.",
    (),
    ServedBy.BOTH,
)
EVENTS_DROPPED = Family(
    "celery_prom_events_dropped_total",
    MetricType.COUNTER,
    "Celery events the recorder could not use, by reason.",
    ("reason",),
    ServedBy.BOTH,
)
BROKER_UP = Family(
    "celery_prom_broker_up",
    MetricType.GAUGE,
    "1 if the exporter's last attempt to reach the broker succeeded, else 0.",
    (),
    ServedBy.EXPORTER,
)
BROKER_RECONNECTS = Family(
    "celery_prom_broker_reconnects_total",
    MetricType.COUNTER,
    "Times the exporter lost its broker connection and connected again.",
    (),
    ServedBy.EXPORTER,
)
COLLECTOR_SUCCESS = Family(
    "celery_prom_collector_success",
    MetricType.GAUGE,
    "1 if the collector succeeded during this scrape, else 0.",
    ("collector",),
    ServedBy.EXPORTER,
)
COLLECTOR_DURATION = Family(
    "celery_prom_collector_duration_seconds",
    MetricType.GAUGE,
    "How long the collector took during this scrape.",
    ("collector",),
    ServedBy.EXPORTER,
    unit="seconds",
)
LABEL_OVERFLOW = Family(
    "celery_prom_label_overflow_total",
    MetricType.COUNTER,
    "Label values replaced by the overflow value because a cardinality cap was reached.",
    ("label",),
    ServedBy.BOTH,
)
PROM_ERRORS = Family(
    "celery_prom_errors_total",
    MetricType.COUNTER,
    "Errors in celery-prom's own parts inside the worker or beat, contained so the worker "
    "or beat goes on (component: startup, tap_install, tap, signal, scrape, multiprocess, "
    "heartbeat, beat).",
    ("component",),
    ServedBy.WORKER_AND_BEAT,
)

# Beat sends a task within milliseconds of its due time while it keeps up; seconds to hours
# late when it was stopped, hung or blocked on the broker.
DEFAULT_BEAT_LATENESS_BUCKETS: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

BEAT_TASKS_SENT = Family(
    "celery_beat_tasks_sent_total",
    MetricType.COUNTER,
    "Task messages beat sent for a schedule entry (entry = the schedule's key).",
    ("entry", "name"),
    ServedBy.BEAT,
)
BEAT_SEND_ERRORS = Family(
    "celery_beat_send_errors_total",
    MetricType.COUNTER,
    "Times beat could not send an entry's task (such as the broker being down); beat goes on.",
    ("entry", "name"),
    ServedBy.BEAT,
)
BEAT_LATENESS = Family(
    "celery_beat_lateness_seconds",
    MetricType.HISTOGRAM,
    "How long after its due time beat sent each task of the entry.",
    ("entry",),
    ServedBy.BEAT,
    unit="seconds",
)
BEAT_NEXT_RUN = Family(
    "celery_beat_next_run_timestamp_seconds",
    MetricType.GAUGE,
    "When the entry is due next (Unix time), as the scheduler plans it.",
    ("entry",),
    ServedBy.BEAT,
    unit="seconds",
)
BEAT_LAST_RUN = Family(
    "celery_beat_last_run_timestamp_seconds",
    MetricType.GAUGE,
    "When the entry last ran (Unix time), as the scheduler records it; absent until it ran.",
    ("entry",),
    ServedBy.BEAT,
    unit="seconds",
)
BEAT_TICK = Family(
    "celery_beat_tick_timestamp_seconds",
    MetricType.GAUGE,
    "When the scheduler last finished a tick (Unix time); absent until its first tick.",
    (),
    ServedBy.BEAT,
    unit="seconds",
)
BEAT_ENTRIES = Family(
    "celery_beat_entries",
    MetricType.GAUGE,
    "Entries in the schedule beat works from, as of the scheduler's last tick.",
    (),
    ServedBy.BEAT,
)
BEAT_INFO = Family(
    "celery_beat_info",
    MetricType.GAUGE,
    "Always 1; the label names the scheduler class beat runs.",
    ("scheduler",),
    ServedBy.BEAT,
)

#: Label values longer than this are dropped as invalid, never truncated into collisions.
MAX_LABEL_VALUE_LENGTH = 256


@dataclass(frozen=True)
class LabelLimits:
    """Caps on distinct label values; values past a cap become ``OVERFLOW_LABEL_VALUE``."""

    task_names: int = 5000
    queues: int = 1000
    hostnames: int = 2000
    exceptions: int = 500


#: Every family, in the order the metric reference lists them.
CATALOGUE: tuple[Family, ...] = (
    *TASK_COUNTERS[:3],
    TASK_FAILED,
    *TASK_COUNTERS[3:],
    *TASK_HISTOGRAMS,
    WORKER_TASKS_ACTIVE,
    WORKER_TASKS_RESERVED,
    WORKER_POOL_PROCESSES,
    WORKER_POOL_PROCESSES_STARTED,
    WORKER_POOL_PROCESS_MEMORY,
    TASK_LONGEST_RUNNING,
    WORKER_INFO,
    WORKER_INVALID_MESSAGES,
    QUEUE_LENGTH,
    QUEUE_LATENCY,
    QUEUE_UNACKED,
    QUEUE_UNACKED_OLDEST,
    QUEUE_DELAYED,
    ACTIVE_CONSUMERS,
    WORKER_UP,
    WORKER_PROCESSED,
    WORKER_LAST_HEARTBEAT,
    TASK_SENT,
    EVENTS_RECEIVED,
    EVENTS_DROPPED,
    BROKER_UP,
    BROKER_RECONNECTS,
    COLLECTOR_SUCCESS,
    COLLECTOR_DURATION,
    LABEL_OVERFLOW,
    PROM_ERRORS,
    BEAT_TASKS_SENT,
    BEAT_SEND_ERRORS,
    BEAT_LATENESS,
    BEAT_NEXT_RUN,
    BEAT_LAST_RUN,
    BEAT_TICK,
    BEAT_ENTRIES,
    BEAT_INFO,
)
