"""Tasks that update user-defined prometheus_client metrics (multiprocess-mode tests).

Workers of this module run with ``PROMETHEUS_MULTIPROC_DIR`` in their environment. The
app, its configuration and instrumentation are those of ``cptest_tasks``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from celery import signals
from cptest_tasks import app, noop
from prometheus_client import Counter, Gauge, Histogram

from tests.support import GAUGE_MODES

# The mistake this reproduces: setting the variable in code, once prometheus_client (here
# through celery_prom) has been imported already.
if "CPTEST_LATE_MULTIPROC_DIR" in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["CPTEST_LATE_MULTIPROC_DIR"]


ORDERS = Counter("cptest_orders", "Orders placed by tasks.", ["kind"])
AMOUNTS = Histogram("cptest_order_amount", "Order amounts.", ["kind"], buckets=(1, 10, 100))
LEVELS = {
    mode: Gauge(
        f"cptest_level_{mode}", f"A level tasks set ({mode}).", ["slot"], multiprocess_mode=mode
    )
    for mode in GAUGE_MODES
}
# No labels: its value (and file) is created at import, in the main process, before the
# worker starts and wipes the directory.
RECEIVED = Counter("cptest_received", "Task messages the worker's main process received.")


@signals.task_received.connect
def count_received(**_: Any) -> None:
    RECEIVED.inc()


@app.task
def order(kind: str, amount: float) -> None:
    ORDERS.labels(kind).inc()
    AMOUNTS.labels(kind).observe(amount)


@app.task
def order_and_die(kind: str, amount: float) -> None:
    order(kind, amount)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def set_levels(value: float, release: str) -> None:
    """Sets every level gauge, then keeps its pool process until ``release`` exists."""
    for gauge in LEVELS.values():
        gauge.labels("held").set(value)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)


@app.task
def publish_noops(count: int) -> None:
    for _ in range(count):
        noop.delay()
