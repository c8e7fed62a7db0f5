"""The overview dashboard: the whole deployment at a glance, from the recorded series.

It reads the series of monitoring/rules/celery-recording.yml, so it stays cheap with many
tasks, workers and queues; the per-task dashboard queries raw series with filters.
"""

from __future__ import annotations

from tools.dashboards.grafana import (
    JSON,
    Grid,
    Query,
    dashboard,
    datasource_variable,
    gauge,
    stat,
    table,
    timeseries,
)

UID = "celery-prom-overview"
TASK_DASHBOARD_UID = "celery-prom-task"
OUTCOMES = ("received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
QUANTILES = ("0.5", "0.95", "0.99")
FIRING_ALERTS = 'ALERTS{alertstate="firing", alertname=~"Celery.*"}'

FAILED = "sum(name_queue_name:celery_task_failed:rate5m)"
SUCCEEDED = "sum(name_queue_name:celery_task_succeeded:rate5m)"
# A deployment without failures has no failure series; count that as 0, not as no data.
FAILURE_RATIO = f"({FAILED} or vector(0)) / ({SUCCEEDED} + ({FAILED} or vector(0)))"


def outcome_rate(outcome: str) -> str:
    return f"sum(name_queue_name:celery_task_{outcome}:rate5m)"


def quantile_over(buckets: str, quantile: str) -> str:
    return f"histogram_quantile({quantile}, sum by (le) ({buckets}))"


def summary_stats(grid: Grid) -> None:
    grid.add(
        stat(
            "Tasks started / s",
            "Task executions started per second, all workers.",
            Query(outcome_rate("started")),
            unit="ops",
        )
    )
    grid.add(
        gauge(
            "Failure ratio",
            "Failed / (succeeded + failed) over the last 5 minutes.",
            Query(FAILURE_RATIO),
            unit="percentunit",
            maximum=1,
            thresholds=[(None, "green"), (0.05, "orange"), (0.1, "red")],
        )
    )
    grid.add(
        stat(
            "Retries / s",
            "Executions that ended by scheduling a retry.",
            Query(outcome_rate("retried")),
            unit="ops",
        )
    )
    grid.add(
        stat(
            "Worker endpoints up",
            "Workers whose metrics endpoint Prometheus scrapes.",
            Query('sum(up{job="celery-worker"})'),
        )
    )
    grid.add(
        stat(
            "Workers alive",
            "Workers whose heartbeats the exporter receives.",
            Query("sum(max by (hostname) (celery_worker_up))"),
        )
    )
    grid.add(
        stat(
            "Active tasks",
            "Tasks executing right now.",
            Query("sum(hostname:celery_worker_tasks_active:max)"),
        )
    )
    grid.add(
        stat(
            "Messages waiting",
            "Messages ready in the broker, all queues.",
            Query("sum(queue_name:celery_queue_length:max)"),
        )
    )
    grid.add(
        stat(
            "Firing alerts",
            "celery-prom alerts firing now.",
            Query(f"count({FIRING_ALERTS}) or vector(0)"),
            thresholds=[(None, "green"), (1, "red")],
        )
    )


def throughput(grid: Grid) -> None:
    grid.add_row("Throughput")
    grid.add(
        timeseries(
            "Task outcomes / s",
            "Task messages and executions per second, by outcome.",
            [Query(outcome_rate(outcome), outcome) for outcome in OUTCOMES],
            unit="ops",
        )
    )
    grid.add(
        timeseries(
            "Failures / s by exception",
            "Failed executions per second by exception class.",
            [
                Query(
                    "sum by (exception) (exception_name_queue_name:celery_task_failed:rate5m)",
                    "{{exception}}",
                )
            ],
            unit="ops",
        )
    )
    grid.add(
        timeseries(
            "Started / s by task",
            "Executions started per second by task name.",
            [Query("sum by (name) (name_queue_name:celery_task_started:rate5m)", "{{name}}")],
            unit="ops",
        )
    )
    grid.add(
        timeseries(
            "Failure ratio by task",
            "Failed / (succeeded + failed) per task and queue.",
            [Query("name_queue_name:celery_task_failed:ratio_rate5m", "{{name}} ({{queue_name}})")],
            unit="percentunit",
        )
    )


def latency(grid: Grid) -> None:
    grid.add_row("Latency")
    runtime = "name_queue_name_le:celery_task_runtime_seconds_bucket:rate5m"
    wait = "name_queue_name_le:celery_task_queue_wait_seconds_bucket:rate5m"
    grid.add(
        timeseries(
            "Runtime percentiles, all tasks",
            "Run time of successful executions.",
            [Query(quantile_over(runtime, q), f"p{float(q) * 100:g}") for q in QUANTILES],
            unit="s",
        )
    )
    grid.add(
        timeseries(
            "Runtime p95 by task",
            "95th percentile run time per task and queue.",
            [
                Query(
                    "name_queue_name:celery_task_runtime_seconds:p95_rate5m",
                    "{{name}} ({{queue_name}})",
                )
            ],
            unit="s",
        )
    )
    grid.add(
        timeseries(
            "Queue wait percentiles, all queues",
            "Time from publish (or ETA) until a worker started the task.",
            [Query(quantile_over(wait, q), f"p{float(q) * 100:g}") for q in QUANTILES],
            unit="s",
        )
    )
    grid.add(
        timeseries(
            "Queue wait p95 by queue",
            "95th percentile queue wait per queue.",
            [Query("queue_name:celery_task_queue_wait_seconds:p95_rate5m", "{{queue_name}}")],
            unit="s",
        )
    )


def queues(grid: Grid) -> None:
    grid.add_row("Queues")
    grid.add(
        timeseries(
            "Queue length",
            "Messages ready in each queue (all priorities).",
            [Query("queue_name:celery_queue_length:max", "{{queue_name}}")],
            width=8,
        )
    )
    grid.add(
        timeseries(
            "Backlog growth",
            "Change of the queue length in messages per second (5 m trend).",
            [Query("queue_name:celery_queue_length:deriv5m", "{{queue_name}}")],
            width=8,
        )
    )
    grid.add(
        timeseries(
            "Consumers",
            "Consumers the broker reports per queue (RabbitMQ).",
            [Query("queue_name:celery_active_consumer_count:max", "{{queue_name}}")],
            width=8,
        )
    )


def workers(grid: Grid) -> None:
    grid.add_row("Workers")
    grid.add(
        timeseries(
            "Workers up",
            "1 while a worker's heartbeats arrive (exporter) or its endpoint answers (scrape).",
            [
                Query("max by (hostname) (celery_worker_up)", "{{hostname}} heartbeat"),
                Query('up{job="celery-worker"}', "{{instance}} endpoint"),
            ],
            width=8,
        )
    )
    grid.add(
        timeseries(
            "Active tasks by worker",
            "Tasks each worker executes right now.",
            [Query("hostname:celery_worker_tasks_active:max", "{{hostname}}")],
            width=8,
        )
    )
    grid.add(
        timeseries(
            "Pool and prefetch by worker",
            "Pool processes alive and tasks reserved (prefetched, not started) per worker.",
            [
                Query("max by (hostname) (celery_worker_pool_processes)", "{{hostname}} processes"),
                Query("max by (hostname) (celery_worker_tasks_reserved)", "{{hostname}} reserved"),
            ],
            width=8,
        )
    )


#: The signals row, a third of a row each: (title, description, query, legend, unit).
SIGNAL_PANELS = (
    (
        "Queue latency",
        "Age of the oldest message waiting in each queue (Redis; from the publish time "
        "install(app) stamps). Growing without bound: nothing takes from the queue.",
        "queue_name:celery_queue_latency_seconds:max",
        "{{queue_name}}",
        "s",
    ),
    (
        "Unacknowledged messages",
        "Messages workers took from each queue and have not acknowledged yet: prefetched, "
        "ETA and countdown tasks, acks_late tasks running (Redis; SQS: in flight).",
        "queue_name:celery_queue_unacked_messages:max",
        "{{queue_name}}",
        "short",
    ),
    (
        "Oldest unacknowledged",
        "Age of the oldest unacknowledged message of each queue (Redis). Past the "
        "transport's visibility timeout Redis hands it to a worker again.",
        "queue_name:celery_queue_unacked_oldest_seconds:max",
        "{{queue_name}}",
        "s",
    ),
    (
        "Longest running by task and worker",
        "How long the oldest execution of each task still running on each worker has run; "
        "a line only while one runs.",
        "hostname_name_queue_name:celery_task_longest_running_seconds:max",
        "{{name}} on {{hostname}}",
        "s",
    ),
    (
        "Pool process memory",
        "Resident memory of each prefork pool process, by worker and pool slot.",
        "hostname_process_index:celery_worker_pool_process_resident_memory_bytes:max",
        "{{hostname}} #{{process_index}}",
        "bytes",
    ),
    (
        "Pool processes started / min",
        "Prefork pool processes started per minute by each worker: replacements of "
        "processes recycled by --max-tasks-per-child or --max-memory-per-child, or crashed.",
        "60 * hostname:celery_worker_pool_processes_started:rate5m",
        "{{hostname}}",
        "short",
    ),
)


def signals(grid: Grid) -> None:
    grid.add_row("Signals")
    for title, description, expr, legend, unit in SIGNAL_PANELS:
        grid.add(timeseries(title, description, [Query(expr, legend)], unit=unit, width=8))


def beat(grid: Grid) -> None:
    grid.add_row("Beat")
    grid.add(
        timeseries(
            "Beat sends / s by entry",
            "Tasks beat sent per second for each schedule entry, and sends that failed.",
            [
                Query("sum by (entry) (entry_name:celery_beat_tasks_sent:rate5m)", "{{entry}}"),
                Query(
                    "sum by (entry) (entry_name:celery_beat_send_errors:rate5m)",
                    "{{entry}} failed",
                ),
            ],
            unit="ops",
        )
    )
    grid.add(
        timeseries(
            "Beat lateness by entry",
            "How long after their due time beat sent each entry's tasks (mean over 5 m).",
            [Query("entry:celery_beat_lateness_seconds:mean5m", "{{entry}}")],
            unit="s",
        )
    )
    grid.add(
        timeseries(
            "Next run by entry",
            "Seconds until each entry is due; below zero it is overdue.",
            [Query("entry:celery_beat_next_run_timestamp_seconds:max - time()", "{{entry}}")],
            unit="s",
        )
    )
    grid.add(
        timeseries(
            "Since the scheduler's last tick",
            "Seconds since each beat's scheduler finished a tick; it sleeps at most its max "
            "interval between ticks.",
            [Query("time() - celery_beat_tick_timestamp_seconds", "{{instance}}")],
            unit="s",
        )
    )


def tables(grid: Grid) -> None:
    grid.add_row("Tasks and alerts")
    grid.add(
        table(
            "Tasks",
            "Per task over the last 5 minutes; click a name for its dashboard.",
            [
                Query("sum by (name) (name_queue_name:celery_task_started:rate5m)"),
                Query("max by (name) (name_queue_name:celery_task_failed:ratio_rate5m)"),
                Query("max by (name) (name_queue_name:celery_task_runtime_seconds:p95_rate5m)"),
            ],
            columns={
                "name": "Task",
                "Value #A": "Started / s",
                "Value #B": "Failure ratio",
                "Value #C": "Runtime p95 (s)",
            },
            links={
                "Task": f"/d/{TASK_DASHBOARD_UID}?var-task=${{__value.raw}}"
                "&${datasource:queryparam}&${__url_time_range}"
            },
        )
    )
    grid.add(
        table(
            "Firing alerts",
            "celery-prom alerts firing now (Prometheus' ALERTS series).",
            [Query(FIRING_ALERTS)],
            columns={
                "alertname": "Alert",
                "severity": "Severity",
                "queue_name": "Queue",
                "name": "Task",
                "entry": "Beat entry",
                "hostname": "Worker",
                "instance": "Instance",
            },
            hidden=("Time", "Value", "__name__", "alertstate", "job"),
        )
    )


def build() -> JSON:
    grid = Grid()
    for section in (summary_stats, throughput, latency, queues, workers, signals, beat, tables):
        section(grid)
    return dashboard(
        UID,
        "Celery / Overview",
        "Throughput, failures, latency, queues, workers, stuck tasks and messages, pool "
        "memory and beat of a Celery deployment (celery-prom).",
        [datasource_variable()],
        grid,
    )
