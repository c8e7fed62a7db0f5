"""Canvas on a real worker: chains, groups, chords and ``Task.replace``, counted per name.

``Task.replace`` sends the replacement under the replaced task's id, and a group it is
replaced with becomes a chord whose ``celery.accumulate`` body takes that id too; Celery
reports the replaced attempt's end with no event at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import chain, chord, group

import celery_prom
from tests.bootsteps.test_tap import T
from tests.support import Broker, Scrape, WorkerProcess, load_test_app, running_worker, unique

#: Every family that ends a started execution (failed is counted by exception).
ENDINGS = ("succeeded", "retried", "revoked", "rejected", "replaced", "ignored")

# Per task name, every counter that is not zero once the mix below has run.
ADD_RUNS = 3 + 4 + 3 + 1 + 3 + 2 + 2  # chain, group, chord header, then the replacements
EXPECTED: dict[str, dict[str, float]] = {
    f"{T}add": {"received": ADD_RUNS, "started": ADD_RUNS, "succeeded": ADD_RUNS},
    f"{T}total": {"received": 1, "started": 1, "succeeded": 1},
    "celery.accumulate": {"received": 1, "started": 1, "succeeded": 1},
    f"{T}replace_with_add": {"received": 2, "started": 2, "replaced": 2},
    f"{T}replace_with_chain": {"received": 1, "started": 1, "replaced": 1},
    f"{T}replace_with_group": {"received": 1, "started": 1, "replaced": 1},
    f"{T}replace_with_failure": {"received": 1, "started": 1, "replaced": 1},
    f"{T}replace_on_queue": {"received": 1, "started": 1, "replaced": 1},
    f"{T}fail": {"received": 1, "started": 1, "failed:ValueError": 1},
    f"{T}ignore_itself": {"received": 1, "started": 1, "ignored": 1},
}


def canvas_app(broker: Broker, queue: str) -> Any:
    """A producer of the test app's canvas, with the result backend chords need."""
    app = load_test_app(broker, queue)
    app.conf.update(
        result_backend=broker.url, result_backend_transport_options=broker.transport_options
    )
    celery_prom.install(app)
    return app


def send_canvas(app: Any, unconsumed_queue: str) -> None:
    def task(name: str, *args: Any) -> Any:
        return app.signature(f"{T}{name}", args=args)

    chain(task("add", 1, 1), task("add", 2), task("add", 3)).apply_async()
    group(task("add", number, number) for number in range(4)).apply_async()
    chord([task("add", number, number) for number in range(3)], task("total")).apply_async()
    task("replace_with_add", 1, 2).apply_async()
    task("replace_with_group", [1, 2, 3]).apply_async()
    task("replace_with_chain", 1).apply_async()
    chain(task("add", 1, 1), task("replace_with_add", 5)).apply_async()
    task("replace_with_failure", "ValueError").apply_async()
    task("replace_on_queue", unconsumed_queue).apply_async()
    task("ignore_itself").apply_async()


def task_series(scrape: Scrape, worker: WorkerProcess) -> list[tuple[str, dict[str, str], float]]:
    """(family, labels, value) of every task counter series of the worker."""
    return [
        (family, dict(labelset), value)
        for family in ("received", "started", "failed", *ENDINGS)
        for labelset, value in scrape.series(f"celery_task_{family}_total").items()
        if dict(labelset)["hostname"] == worker.hostname
    ]


def per_name(scrape: Scrape, worker: WorkerProcess) -> dict[str, dict[str, float]]:
    """Every counter of the worker's tasks that is not zero, failures by exception."""
    found: dict[str, dict[str, float]] = {}
    for family, labels, value in task_series(scrape, worker):
        if value:
            counter = f"failed:{labels['exception']}" if family == "failed" else family
            found.setdefault(labels["name"], {})[counter] = value
    return found


def ended(counters: dict[str, float]) -> float:
    return sum(
        value for counter, value in counters.items() if counter not in ("received", "started")
    )


def settled(scrape: Scrape, worker: WorkerProcess) -> bool:
    counts = per_name(scrape, worker)
    return (
        sum(ended(counters) for counters in counts.values())
        >= sum(ended(counters) for counters in EXPECTED.values())
        and scrape.value("celery_worker_tasks_active", hostname=worker.hostname) == 0
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pool", "concurrency"),
    [pytest.param("prefork", 2, id="prefork-c2"), pytest.param("threads", 4, id="threads")],
)
def test_canvas_and_replaced_tasks_are_counted_exactly_per_name(
    own_redis_broker: Broker, tmp_path: Path, pool: str, concurrency: int
) -> None:
    env = {"CPTEST_RESULT_BACKEND": own_redis_broker.url}
    with running_worker(
        own_redis_broker, tmp_path, pool=pool, concurrency=concurrency, env=env
    ) as worker:
        send_canvas(canvas_app(own_redis_broker, worker.queue), unique("unconsumed"))
        scrape = worker.wait_for_scrape(lambda s: settled(s, worker), what="the canvas to settle")
        counts = per_name(scrape, worker)

    # No execution stays started: each one that started ended in exactly one way.
    assert {name: c.get("started") for name, c in counts.items()} == {
        name: ended(c) for name, c in counts.items()
    }
    assert counts == EXPECTED
    assert {labels["queue_name"] for _, labels, _ in task_series(scrape, worker)} == {worker.queue}
