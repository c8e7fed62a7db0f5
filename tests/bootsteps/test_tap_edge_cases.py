"""The event tap's hard cases, each on a real worker against a real broker."""

from __future__ import annotations

import json
import pickle
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import celery
import pytest

from celery_prom.task_event import RECORDED_MARK
from tests.bootsteps.test_tap import MIX_EXPECTED, T, assert_counts, run_mix
from tests.support import (
    Broker,
    RedisServer,
    Scrape,
    WorkerProcess,
    load_test_app,
    running_worker,
    start_worker,
    wait_for,
)


def labels(worker: WorkerProcess, task: str) -> dict[str, str]:
    return {"name": f"{T}{task}", "hostname": worker.hostname, "queue_name": worker.queue}


OUTCOMES = ("received", "started", "succeeded", "retried", "revoked", "rejected")
#: Celery 5.7 reports Reject(requeue=False) as a failure and a rejection, and a hard time
#: limit twice (the second report is dropped as a duplicate); 5.3 to 5.6 report only the
#: rejection, and the time limit once (checked against 5.3.0, 5.3.6, 5.4.0, 5.5.3, 5.6.3).
REJECT_FAILURES = {"Reject": 1} if celery.VERSION >= (5, 7) else {}
HARD_LIMIT_DROPS = {"duplicate": 1} if celery.VERSION >= (5, 7) else {}


def counts(scrape: Scrape, worker: WorkerProcess, task: str) -> dict[str, float | None]:
    """Every counter of one task, plus its failures by exception."""
    series = labels(worker, task)
    result: dict[str, float | None] = {
        outcome: scrape.value(f"celery_task_{outcome}_total", **series) for outcome in OUTCOMES
    }
    for exception, value in scrape.by_label(
        "celery_task_failed_total", "exception", **series
    ).items():
        result[f"failed:{exception}"] = value
    return result


def counted(failed: dict[str, int] | None = None, **outcomes: int) -> dict[str, float | None]:
    """What ``counts`` shows of a task with these outcomes and failures (by exception class):
    every counter not named is 0."""
    failures = {f"failed:{name}": count for name, count in (failed or {}).items()}
    return {**dict.fromkeys(OUTCOMES, 0), **outcomes, **failures}


def finished(worker: WorkerProcess, count: int) -> Scrape:
    """Wait until ``count`` outcomes were recorded and nothing is running."""

    def done(scrape: Scrape) -> bool:
        host = {"hostname": worker.hostname}
        outcomes = sum(
            scrape.total(f"celery_task_{outcome}_total", **host)
            for outcome in ("succeeded", "failed", "retried", "revoked", "rejected")
        )
        return outcomes >= count and scrape.value("celery_worker_tasks_active", **host) == 0

    return worker.wait_for_scrape(done, what=f"{count} outcomes")


def dropped(scrape: Scrape) -> dict[str, float]:
    return scrape.by_label("celery_prom_events_dropped_total", "reason")


class EventCapture:
    """Everything published on the broker's event exchange while it runs."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self.events.append})
        self._ready = threading.Event()
        self._receiver.on_consume_ready = lambda *args, **kwargs: self._ready.set()
        self._thread = threading.Thread(
            target=self._receiver.capture, kwargs={"wakeup": False}, daemon=True
        )

    def of_type(self, prefix: str) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event["type"].startswith(prefix)]

    def wait_until_hearing(self, worker: WorkerProcess) -> None:
        """Block until a heartbeat of ``worker`` arrives.

        Kombu's Redis transport subscribes to the event channel only once the consumer
        first polls, after it reports itself ready; events published in between are lost
        to this capture. A heartbeat heard proves the subscription is live.
        """
        wait_for(
            lambda: [
                event
                for event in self.of_type("worker-heartbeat")
                if event["hostname"] == worker.hostname
            ],
            what="a heartbeat from the worker",
        )

    @contextmanager
    def running(self) -> Iterator[EventCapture]:
        self._thread.start()
        assert self._ready.wait(30), "the event consumer did not start"
        try:
            yield self
        finally:
            self._receiver.should_stop = True
            self._thread.join(30)
            self._connection.release()


def test_no_task_events_reach_the_broker(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork") as worker:
        app = client_app_for(redis_broker, worker.queue)
        with EventCapture(app).running() as capture:
            capture.wait_until_hearing(worker)
            scrape = run_mix(worker, app)

    assert_counts(scrape, worker, MIX_EXPECTED)
    assert capture.of_type("task-") == []


def test_counting_needs_no_event_dispatcher_at_all(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    args = ("--without-heartbeat", "--without-gossip")
    with running_worker(redis_broker, tmp_path, pool="prefork", extra_args=args) as worker:
        scrape = run_mix(worker, client_app_for(redis_broker, worker.queue))

    assert_counts(scrape, worker, MIX_EXPECTED)


def test_with_task_events_on_they_are_still_published_and_marked(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork", extra_args=("-E",)) as worker:
        app = client_app_for(redis_broker, worker.queue)
        with EventCapture(app).running() as capture:
            capture.wait_until_hearing(worker)
            scrape = run_mix(worker, app)
            # Every event of the mix, not just the successes: a failure's received event
            # can still be on its way when the last success arrives.
            wait_for(
                lambda: (
                    len(capture.of_type("task-succeeded")) >= 22
                    and len(capture.of_type("task-received")) >= 31
                ),
                what="the task-succeeded and task-received events",
            )

    assert_counts(scrape, worker, MIX_EXPECTED)
    received = capture.of_type("task-received")
    assert len(received) == 31
    assert all(event[RECORDED_MARK] is True for event in capture.of_type("task-"))
    assert {event["queue"] for event in received} == {worker.queue}


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_revoking_a_task_waiting_for_its_eta(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any], pool: str
) -> None:
    with running_worker(redis_broker, tmp_path, pool=pool) as worker:
        app = client_app_for(redis_broker, worker.queue)
        result = app.send_task(f"{T}noop", countdown=2)
        worker.wait_for_scrape(
            lambda s: s.value("celery_worker_tasks_reserved", hostname=worker.hostname) == 1,
            what="the ETA task to be held",
        )
        app.control.revoke(result.id)
        scrape = finished(worker, 1)

    assert counts(scrape, worker, "noop") == counted(received=1, revoked=1)


def test_terminating_a_running_task_counts_it_revoked_not_failed(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork") as worker:
        app = client_app_for(redis_broker, worker.queue)
        result = app.send_task(f"{T}sleep", args=[30])
        worker.wait_for_scrape(
            lambda s: s.value("celery_worker_tasks_active", hostname=worker.hostname) == 1,
            what="the task to run",
        )
        app.control.revoke(result.id, terminate=True)
        scrape = finished(worker, 1)

    assert counts(scrape, worker, "sleep") == counted(received=1, started=1, revoked=1)


def test_an_expired_task_counts_as_revoked_under_its_name(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="solo") as worker:
        app = client_app_for(redis_broker, worker.queue)
        app.send_task(f"{T}noop", expires=datetime.now(timezone.utc) - timedelta(minutes=1))
        scrape = finished(worker, 1)

    assert counts(scrape, worker, "noop") == counted(revoked=1)


def test_prefork_failures_keep_their_exception_class(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork") as worker:
        app = client_app_for(redis_broker, worker.queue)
        app.send_task(f"{T}kill_own_process")
        app.send_task(f"{T}exceed_soft_limit")
        app.send_task(f"{T}exceed_hard_limit")
        app.send_task(f"{T}reject", args=[False])
        app.send_task(f"{T}fail", args=["NotPicklable"])
        app.send_task(f"{T}fail", args=["OddRepr"])
        # Five failures and a rejection, which Celery 5.7 also reports as a failure.
        finished(worker, 6 + len(REJECT_FAILURES))
        # Celery 5.7's second report of the hard time limit can come after the outcomes.
        scrape = worker.wait_for_scrape(
            lambda s: dropped(s) == HARD_LIMIT_DROPS, what="every report of the hard time limit"
        )

    def one_failure(exception: str, **outcomes: int) -> dict[str, float | None]:
        return counted(received=1, started=1, failed={exception: 1}, **outcomes)

    assert counts(scrape, worker, "kill_own_process") == one_failure("WorkerLostError")
    assert counts(scrape, worker, "exceed_soft_limit") == one_failure("SoftTimeLimitExceeded")
    # Counted once, though Celery 5.7 reports it twice.
    assert counts(scrape, worker, "exceed_hard_limit") == one_failure("TimeLimitExceeded")
    # Reject(requeue=False) of an acks_late task rejects its message.
    assert counts(scrape, worker, "reject") == counted(
        received=1, started=1, rejected=1, failed=REJECT_FAILURES
    )
    # The event shows only a repr, which OddRepr's hides its class in; the result has it.
    assert counts(scrape, worker, "fail") == counted(
        received=2, started=2, failed={"NotPicklable": 1, "OddRepr": 1}
    )
    assert dropped(scrape) == HARD_LIMIT_DROPS


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_in_process_pools_see_the_real_exception_class(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any], pool: str
) -> None:
    with running_worker(redis_broker, tmp_path, pool=pool) as worker:
        app = client_app_for(redis_broker, worker.queue)
        app.send_task(f"{T}fail", args=["OddRepr"])
        app.send_task(f"{T}reject", args=[False])
        scrape = finished(worker, 2 + len(REJECT_FAILURES))

    assert counts(scrape, worker, "fail")["failed:OddRepr"] == 1
    assert counts(scrape, worker, "reject") == counted(
        received=1, started=1, rejected=1, failed=REJECT_FAILURES
    )


def test_unknown_task_names_count_as_failed_not_received(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork") as worker:
        app = client_app_for(redis_broker, worker.queue)
        app.send_task(f"{T}no_such_task")
        app.send_task(f"{T}noop")
        scrape = finished(worker, 2)

    assert counts(scrape, worker, "no_such_task") == counted(failed={"NotRegistered": 1})
    assert counts(scrape, worker, "noop")["succeeded"] == 1


def proto2_headers(task: str, **overrides: Any) -> dict[str, Any]:
    headers = {
        "lang": "py",
        "task": task,
        "id": str(uuid.uuid4()),
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": None,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "test",
        "ignore_result": False,
    }
    headers.update(overrides)
    return headers


def publish_malformed(broker: Broker, queue: str) -> None:
    """One message of each kind Celery discards; the bodies are otherwise valid noops."""
    app = load_test_app(broker, queue)
    json_body = json.dumps([[], {}, {}])
    messages: list[tuple[Any, dict[str, Any] | None, str, str]] = [
        (b"{not json", proto2_headers(f"{T}noop"), "application/json", "utf-8"),
        (json.dumps({"foo": 1}), None, "application/json", "utf-8"),
        (json_body, proto2_headers(f"{T}noop", eta="not-a-date"), "application/json", "utf-8"),
        (
            pickle.dumps(([], {}, {})),
            proto2_headers(f"{T}noop"),
            "application/x-python-serialize",
            "binary",
        ),
    ]
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for body, headers, content_type, encoding in messages:
            producer.publish(
                body,
                exchange=queue,
                routing_key=queue,
                headers=headers,
                content_type=content_type,
                content_encoding=encoding,
                declare=[app.amqp.queues[queue]],
            )


def test_malformed_task_messages_are_counted_and_change_nothing_else(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork") as worker:
        publish_malformed(redis_broker, worker.queue)
        scrape = run_mix(worker, client_app_for(redis_broker, worker.queue))
        worker.assert_alive()

    assert_counts(scrape, worker, MIX_EXPECTED)
    assert scrape.by_label("celery_worker_invalid_messages_total", "reason") == {
        "undecodable": 1,
        "unrecognized": 1,
        "invalid": 2,
    }
    assert dropped(scrape) == {}


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_counting_stays_exact_across_a_broker_restart(
    tmp_path: Path, client_app_for: Callable[..., Any], pool: str
) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    worker = start_worker(redis_server.broker, tmp_path, pool=pool)
    try:
        app = client_app_for(redis_server.broker, worker.queue)
        for _ in range(5):
            app.send_task(f"{T}noop")
        finished(worker, 5)

        redis_server.stop()
        wait_for(
            lambda: "Connection to broker lost" in worker.output(),
            what="the worker to notice the broker is gone",
        )
        redis_server.start()
        wait_for(
            lambda: worker.output().count("Connected to redis://") >= 2,
            what="the worker to reconnect",
        )
        for _ in range(7):
            app.send_task(f"{T}noop")
        app.send_task(f"{T}fail", args=["KeyError"])
        scrape = finished(worker, 13)
        worker.assert_alive()
    finally:
        worker.stop()
        redis_server.stop()

    assert counts(scrape, worker, "noop") == counted(received=12, started=12, succeeded=12)
    assert counts(scrape, worker, "fail")["failed:KeyError"] == 1


def close_connections(vhost: str) -> int:
    """Have RabbitMQ close every connection to ``vhost`` (this run's own), as on a restart."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "vhost"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pids = [
        line.split("\t")[0] for line in listing.stdout.splitlines() if line.endswith(f"\t{vhost}")
    ]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: broker restart"],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return len(pids)


@pytest.mark.slow
def test_counting_stays_exact_when_rabbitmq_drops_the_worker(
    amqp_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(amqp_broker, tmp_path, pool="prefork") as worker:
        app = client_app_for(amqp_broker, worker.queue)
        for _ in range(5):
            app.send_task(f"{T}noop")
        finished(worker, 5)

        assert close_connections(amqp_broker.url.rsplit("/", 1)[1]) >= 2
        wait_for(
            lambda: worker.output().count("Connected to amqp://") >= 2,
            what="the worker to reconnect",
        )
        for _ in range(7):
            app.send_task(f"{T}noop")
        scrape = finished(worker, 12)

    assert counts(scrape, worker, "noop") == counted(received=12, started=12, succeeded=12)
