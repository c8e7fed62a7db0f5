"""The per-task dashboard: one task (or several), filtered by queue and worker.

It queries the raw series so any combination of task, queue and worker can be selected;
each series is deduplicated with ``max by`` over its own labels before summing, like the
recording rules.
"""

from __future__ import annotations

from tools.dashboards.grafana import (
    JSON,
    Grid,
    Query,
    dashboard,
    datasource_variable,
    heatmap,
    query_variable,
    stat,
    timeseries,
)
from tools.dashboards.overview import OUTCOMES, QUANTILES, TASK_DASHBOARD_UID

SELECTOR = 'name=~"$task", queue_name=~"$queue", hostname=~"$worker"'
SERIES_LABELS = "name, hostname, queue_name"
WINDOW = "$__rate_interval"


def counter(outcome: str, function: str = "rate", window: str = WINDOW, by: str = "") -> str:
    """Sum of a task counter's ``function`` (rate or increase) over the selection."""
    labels = f"{SERIES_LABELS}, exception" if outcome == "failed" else SERIES_LABELS
    inner = f"{function}(celery_task_{outcome}_total{{{SELECTOR}}}[{window}])"
    total = f"sum by ({by}) " if by else "sum"
    return f"{total}(max by ({labels}) ({inner}))"


def buckets(histogram: str, function: str = "rate") -> str:
    inner = f"{function}({histogram}_bucket{{{SELECTOR}}}[{WINDOW}])"
    return f"sum by (le) (max by ({SERIES_LABELS}, le) ({inner}))"


def mean(histogram: str) -> str:
    def part(suffix: str) -> str:
        inner = f"rate({histogram}_{suffix}{{{SELECTOR}}}[{WINDOW}])"
        return f"sum(max by ({SERIES_LABELS}) ({inner}))"

    return f"{part('sum')} / {part('count')}"


def latency_queries(histogram: str) -> list[Query]:
    """The quantiles and the mean; the first quantile brings the buckets' exemplars (the
    same for every quantile: they select the same series)."""
    quantiles = [
        Query(
            f"histogram_quantile({q}, {buckets(histogram)})",
            f"p{float(q) * 100:g}",
            exemplars=index == 0,
        )
        for index, q in enumerate(QUANTILES)
    ]
    return [*quantiles, Query(mean(histogram), "mean")]


def failure_ratio() -> str:
    failed = f"({counter('failed')} or vector(0))"
    return f"{failed} / ({counter('succeeded')} + {failed})"


def summary_stats(grid: Grid) -> None:
    for outcome in ("started", "succeeded", "failed", "retried"):
        grid.add(
            stat(
                f"{outcome.capitalize()} in range",
                f"Executions {outcome} in the selected time range.",
                Query(counter(outcome, "increase", "$__range")),
                width=4,
            )
        )
    grid.add(
        stat(
            "Runtime p95",
            "95th percentile run time of successful executions.",
            Query(f"histogram_quantile(0.95, {buckets('celery_task_runtime_seconds')})"),
            unit="s",
            width=4,
        )
    )
    grid.add(
        stat(
            "Queue wait p95",
            "95th percentile time from publish to start.",
            Query(f"histogram_quantile(0.95, {buckets('celery_task_queue_wait_seconds')})"),
            unit="s",
            width=4,
        )
    )


def outcomes(grid: Grid) -> None:
    grid.add_row("Outcomes")
    grid.add(
        timeseries(
            "Outcomes / s",
            "Task messages and executions per second, by outcome.",
            [Query(counter(outcome), outcome) for outcome in OUTCOMES],
            unit="ops",
        )
    )
    grid.add(
        timeseries(
            "Failures / s by exception",
            "Failed executions by exception class.",
            [Query(counter("failed", by="exception"), "{{exception}}")],
            unit="ops",
        )
    )
    grid.add(
        timeseries(
            "Failure ratio",
            "Failed / (succeeded + failed).",
            [Query(failure_ratio(), "failure ratio")],
            unit="percentunit",
        )
    )
    grid.add(
        timeseries(
            "Started / s by worker",
            "Executions started per second per worker.",
            [Query(counter("started", by="hostname"), "{{hostname}}")],
            unit="ops",
        )
    )


def latency(grid: Grid) -> None:
    grid.add_row("Latency")
    grid.add(
        timeseries(
            "Runtime",
            "Run time of successful executions. Exemplars mark the task id of a recent run "
            "per bucket (Prometheus needs exemplar storage on).",
            latency_queries("celery_task_runtime_seconds"),
            unit="s",
        )
    )
    grid.add(
        timeseries(
            "Queue wait",
            "Time from publish (or ETA) until a worker started it. Exemplars mark the task id "
            "of a recent start per bucket (Prometheus needs exemplar storage on).",
            latency_queries("celery_task_queue_wait_seconds"),
            unit="s",
        )
    )
    grid.add(
        heatmap(
            "Runtime distribution",
            "Successful executions per runtime bucket, with the task id of a recent run per "
            "bucket as exemplar.",
            Query(buckets("celery_task_runtime_seconds", "increase"), exemplars=True),
            unit="s",
        )
    )
    grid.add(
        heatmap(
            "Queue wait distribution",
            "Started executions per queue-wait bucket, with the task id of a recent start per "
            "bucket as exemplar.",
            Query(buckets("celery_task_queue_wait_seconds", "increase"), exemplars=True),
            unit="s",
        )
    )
    grid.add(
        timeseries(
            "Longest running",
            "How long the oldest execution still running has run, per task and worker; a "
            "line only while one runs. One that keeps rising is stuck.",
            [
                Query(
                    f"max by (name, hostname) (celery_task_longest_running_seconds{{{SELECTOR}}})",
                    "{{name}} on {{hostname}}",
                )
            ],
            unit="s",
            width=24,
        )
    )


def workers(grid: Grid) -> None:
    grid.add_row("Selected workers")
    worker = 'hostname=~"$worker"'
    grid.add(
        timeseries(
            "Worker state",
            "Active and reserved tasks and pool processes of the selected workers.",
            [
                Query(
                    f"max by (hostname) (celery_worker_tasks_active{{{worker}}})",
                    "{{hostname}} active",
                ),
                Query(
                    f"max by (hostname) (celery_worker_tasks_reserved{{{worker}}})",
                    "{{hostname}} reserved",
                ),
                Query(
                    f"max by (hostname) (celery_worker_pool_processes{{{worker}}})",
                    "{{hostname}} processes",
                ),
            ],
            width=24,
        )
    )


def build() -> JSON:
    grid = Grid()
    for section in (summary_stats, outcomes, latency, workers):
        section(grid)
    received = "celery_task_received_total"
    variables = [
        datasource_variable(),
        query_variable("task", "Task", f"label_values({received}, name)"),
        query_variable("queue", "Queue", f'label_values({received}{{name=~"$task"}}, queue_name)'),
        query_variable(
            "worker",
            "Worker",
            f'label_values({received}{{name=~"$task", queue_name=~"$queue"}}, hostname)',
        ),
    ]
    return dashboard(
        TASK_DASHBOARD_UID,
        "Celery / Task",
        "Outcomes, failures and latency of selected Celery tasks, queues and workers "
        "(celery-prom).",
        variables,
        grid,
    )
