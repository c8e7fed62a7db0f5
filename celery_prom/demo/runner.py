"""Runs the demo: broker folder, worker, exporter, customers, a live summary, clean exit."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from celery_prom.config import mask_secrets
from celery_prom.demo.names import BROKER_ENV, DEFAULT_QUEUE, REPORTS_QUEUE, TRANSPORT_OPTIONS_ENV
from celery_prom.demo.traffic import send_traffic

#: How long a child gets to shut down on its own before it is killed.
STOP_TIMEOUT = 15.0
SUMMARY_INTERVAL = 5.0


@dataclass(frozen=True)
class DemoOptions:
    broker_url: str | None
    host: str
    worker_port: int
    exporter_port: int
    duration: float | None


@dataclass(frozen=True)
class Broker:
    url: str
    transport_options: Mapping[str, Any]
    embedded: bool

    def env(self) -> dict[str, str]:
        return {
            BROKER_ENV: self.url,
            TRANSPORT_OPTIONS_ENV: json.dumps(dict(self.transport_options)),
        }


@contextmanager
def demo_folder() -> Iterator[Path]:
    """A temporary folder for the embedded broker's messages and the children's logs."""
    folder = Path(tempfile.mkdtemp(prefix="celery-prom-demo-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def demo_broker(url: str | None, folder: Path) -> Broker:
    """The given broker, or kombu's filesystem transport inside ``folder``."""
    if url is not None:
        return Broker(url, {}, embedded=False)
    messages = folder / "messages"
    control = folder / "control"
    messages.mkdir()
    control.mkdir()
    return Broker(
        "filesystem://",
        {
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "control_folder": str(control),
            "store_processed": False,
        },
        embedded=True,
    )


@dataclass(frozen=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Children:
    """The processes the demo started; all of them are stopped, whatever happens."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(self, name: str, args: list[str], env: Mapping[str, str], log: Path) -> Child:
        with log.open("wb") as out:
            # A session of its own: Ctrl-C reaches the demo, which then stops the children
            # in order instead of all of them at once.
            process = subprocess.Popen(
                args, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        child = Child(name, process, log)
        self._children.append(child)
        return child

    def exited(self) -> Child | None:
        return next((c for c in self._children if c.process.poll() is not None), None)

    def stop_all(self) -> None:
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self._children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run until Ctrl-C, SIGTERM or ``duration``; returns the exit status."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with demo_folder() as folder:
            children = Children()
            broker = demo_broker(options.broker_url, folder)
            try:
                status = _run(options, broker, folder, children, stop=stop, out=out)
            finally:
                # Before the folder goes: the children still use it.
                stop.set()
                children.stop_all()
                if not broker.embedded:
                    _empty_demo_queues(broker, out)
    except KeyboardInterrupt:
        status = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        "celery-prom demo: stopped; its processes and temporary files are gone",
        file=out,
        flush=True,
    )
    return status


def _run(
    options: DemoOptions,
    broker: Broker,
    folder: Path,
    children: Children,
    *,
    stop: threading.Event,
    out: TextIO,
) -> int:
    env = {**os.environ, **broker.env()}
    children.start("worker", _worker_command(options, folder), env, folder / "worker.log")
    children.start("exporter", _exporter_command(options), env, folder / "exporter.log")
    _announce(options, broker, folder, out)
    traffic = threading.Thread(target=send_traffic, args=(_demo_app(broker), stop), daemon=True)
    traffic.start()
    status = _watch(options, children, stop, out)
    stop.set()
    traffic.join(10)
    return status


def _demo_celery(*args: str) -> list[str]:
    """The ``celery`` command line running the demo app's ``args`` command."""
    return [sys.executable, "-m", "celery", "-A", "celery_prom.demo.app", *args]


def _worker_command(options: DemoOptions, folder: Path) -> list[str]:
    return _demo_celery(
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-Q",
        f"{DEFAULT_QUEUE},{REPORTS_QUEUE}",
        "-n",
        "demo@%h",
        # With beat inside: its periodic tasks, and its metrics on the worker's endpoint.
        "-B",
        "--schedule",
        str(folder / "beat-schedule"),
        "--loglevel=WARNING",
        "--prom-port",
        str(options.worker_port),
        "--prom-host",
        options.host,
    )


def _exporter_command(options: DemoOptions) -> list[str]:
    return _demo_celery("prom", "--port", str(options.exporter_port), "--host", options.host)


def _demo_app(broker: Broker) -> Any:
    """The demo app, pointed at the demo's broker (for the customers in this process)."""
    app = importlib.import_module("celery_prom.demo.app").app
    app.conf.update(broker_url=broker.url, broker_transport_options=dict(broker.transport_options))
    return app


def _empty_demo_queues(broker: Broker, out: TextIO) -> None:
    """Drop the orders a real broker still holds, so the next demo starts with none.

    Runs after the worker stopped, when it has handed back what it had prefetched.
    """
    queues = f"{DEFAULT_QUEUE}, {REPORTS_QUEUE}"
    try:
        removed = _demo_app(broker).control.purge()
    except Exception as exc:  # noqa: BLE001 - reported; the demo is ending either way
        message = f"could not empty {queues}: {type(exc).__name__}: {exc}"
    else:
        message = f"removed {removed} unprocessed messages from {queues}"
    print(f"celery-prom demo: {mask_secrets(message)}", file=out, flush=True)


def _announce(options: DemoOptions, broker: Broker, folder: Path, out: TextIO) -> None:
    where = (
        f"an embedded broker in {folder}"
        if broker.embedded
        else f"broker {mask_secrets(broker.url)}"
    )
    host = _http_host(options.host)
    print(f"celery-prom demo on {where}", file=out)
    print(f"  worker (and beat) metrics: http://{host}:{options.worker_port}/metrics", file=out)
    print(f"  exporter metrics:          http://{host}:{options.exporter_port}/metrics", file=out)
    print("  Ctrl-C stops everything.", file=out, flush=True)


def _watch(options: DemoOptions, children: Children, stop: threading.Event, out: TextIO) -> int:
    deadline = None if options.duration is None else time.monotonic() + options.duration
    while not stop.wait(
        SUMMARY_INTERVAL
        if deadline is None
        else max(0.0, min(SUMMARY_INTERVAL, deadline - time.monotonic()))
    ):
        exited = children.exited()
        if exited is not None:
            print(
                f"celery-prom demo: the {exited.name} exited with status "
                f"{exited.process.returncode}:",
                file=out,
            )
            print(exited.log_tail(), file=out, flush=True)
            return 1
        print(_summary(options), file=out, flush=True)
        if deadline is not None and time.monotonic() >= deadline:
            return 0
    return 0


def _summary(options: DemoOptions) -> str:
    host = _http_host(options.host)
    worker = _scrape(f"http://{host}:{options.worker_port}/metrics")
    exporter = _scrape(f"http://{host}:{options.exporter_port}/metrics")
    queued = (
        ", ".join(
            f"{labels['queue_name']} {value:.0f}"
            for labels, value in sorted(
                _samples(exporter, "celery_queue_length"), key=lambda item: item[0]["queue_name"]
            )
        )
        or "n/a"
    )
    return (
        f"  {time.strftime('%H:%M:%S')}  "
        f"succeeded {_total(worker, 'celery_task_succeeded_total'):.0f}  "
        f"failed {_total(worker, 'celery_task_failed_total'):.0f}  "
        f"retried {_total(worker, 'celery_task_retried_total'):.0f}  "
        f"running {_total(worker, 'celery_worker_tasks_active'):.0f}  "
        f"queued: {queued}  "
        f"workers up {_total(exporter, 'celery_worker_up'):.0f}  "
        f"beat sent {_total(worker, 'celery_beat_tasks_sent_total'):.0f}"
    )


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode("utf-8"))
    except OSError:
        return ""


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _total(text: str, name: str) -> float:
    return sum(value for _, value in _samples(text, name))


def _http_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
