"""The Celery app the integration tests run workers of (imported by worker subprocesses).

Configured from the environment so every test can give its worker its own broker, key
prefix and queue.
"""

from __future__ import annotations

import json
import os
import threading
import time

from celery import Celery, chain, group
from celery.exceptions import Ignore, Reject

import celery_prom
from celery_prom.bootsteps import PrometheusServer

app = Celery("cptest")
app.conf.update(
    broker_url=os.environ.get("CPTEST_BROKER_URL", "memory://"),
    broker_transport_options=json.loads(os.environ.get("CPTEST_TRANSPORT_OPTIONS", "{}")),
    task_default_queue=os.environ.get("CPTEST_QUEUE", "celery"),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("CPTEST_PREFETCH", "4")),
    # Chords need one (and Task.replace with a group makes a chord); None: no backend.
    result_backend=os.environ.get("CPTEST_RESULT_BACKEND"),
    result_backend_transport_options=json.loads(os.environ.get("CPTEST_TRANSPORT_OPTIONS", "{}")),
)
# More settings as one JSON object, such as celery-prom's own (celery_prom_port, ...).
app.conf.update(json.loads(os.environ.get("CPTEST_CONF", "{}")))
# "install": celery_prom.install(app); "step": only the worker step class; "none": plain.
_INSTRUMENTATION = os.environ.get("CPTEST_INSTRUMENTATION", "install")
if _INSTRUMENTATION == "install":
    celery_prom.install(app)
elif _INSTRUMENTATION == "step":
    app.steps["worker"].add(PrometheusServer)


class PaymentDeclined(Exception):
    """A custom exception: the label must read PaymentDeclined."""


class OddRepr(Exception):
    """An exception whose repr hides its class name."""

    def __repr__(self) -> str:
        return "<something went wrong>"


class NotPicklable(Exception):
    """An exception that cannot cross the pool's process boundary as itself."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


_EXCEPTIONS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "PaymentDeclined": PaymentDeclined,
    "OddRepr": OddRepr,
    "NotPicklable": NotPicklable,
}


@app.task
def noop() -> None:
    return None


@app.task
def fail(exception: str) -> None:
    raise _EXCEPTIONS[exception]("boom")


#: What ``hold_memory`` allocated, kept for the pool process's lifetime.
_HELD: list[bytes] = []


@app.task
def hold_memory(megabytes: int) -> None:
    """Allocate and keep ``megabytes`` MiB in the pool process that runs it."""
    _HELD.append(b"x" * (megabytes * 1024 * 1024))  # written, so resident


@app.task
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(acks_late=True)
def hold_until(release: str) -> None:
    """Runs until the file ``release`` exists (a minute at most), its message unacknowledged
    until then."""
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)


@app.task(bind=True, max_retries=5)
def flaky(self, failures: int) -> str:  # type: ignore[no-untyped-def]
    """Fails ``failures`` times, retrying at once each time, then succeeds."""
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    return "ok"


@app.task(bind=True, max_retries=1)
def always_retry(self) -> None:  # type: ignore[no-untyped-def]
    raise self.retry(countdown=0)


@app.task(acks_late=True)
def reject(requeue: bool) -> None:
    raise Reject("rejected by the task", requeue=requeue)


@app.task
def kill_own_process() -> None:
    os.kill(os.getpid(), 9)


@app.task(soft_time_limit=0.3)
def exceed_soft_limit() -> None:
    time.sleep(5)


@app.task(time_limit=0.5)
def exceed_hard_limit() -> None:
    time.sleep(5)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(bind=True)
def replace_with_add(self, x: int, y: int) -> None:  # type: ignore[no-untyped-def]
    raise self.replace(add.s(x, y))


@app.task(bind=True)
def replace_with_chain(self, x: int) -> None:  # type: ignore[no-untyped-def]
    raise self.replace(chain(add.s(x, 1), add.s(1)))


@app.task(bind=True)
def replace_with_group(self, numbers: list[int]) -> None:  # type: ignore[no-untyped-def]
    raise self.replace(group([add.s(number, 1) for number in numbers]))


@app.task(bind=True)
def replace_with_failure(self, exception: str) -> None:  # type: ignore[no-untyped-def]
    raise self.replace(fail.si(exception))


@app.task(bind=True)
def replace_on_queue(self, queue: str) -> None:  # type: ignore[no-untyped-def]
    """Replaced by a task sent to ``queue``, which this worker may not consume."""
    raise self.replace(add.si(1, 1).set(queue=queue))


@app.task
def ignore_itself() -> None:
    raise Ignore()
