"""The exporter against a flapping broker: does it stay up, exact and flat?

    .venv/bin/python benchmarks/exporter_soak.py [--minutes 10] [--period 20] [--down 3]

A private redis-server is killed (SIGKILL) every ``period`` seconds and started again
``down`` seconds later, for ``minutes``. Meanwhile a plain Celery worker with ``-E`` runs
no-op tasks a producer sends, and a client scrapes the exporter every second. Reported:
whether the exporter ever exited, scrapes answered and their slowest time, any counter
that went backwards, how long ``celery_prom_broker_up`` took to return after each restart,
and the exporter's resident memory and open descriptors after the first outage against the
end of the run (the baseline of the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

# Run as a script: tests.support from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import (
    REPO,
    Broker,
    RedisServer,
    Scrape,
    app_env,
    exporter_command,
    free_port,
    http_get,
    stop_process,
    unique,
    worker_command,
)

COUNTERS = ("celery_prom_events_received_total", "celery_task_succeeded_total")
QUEUE = "soak"


@dataclass
class Observations:
    scrapes: int = 0
    failed_scrapes: int = 0
    slowest: float = 0.0
    backwards: list[str] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)
    broker_up: float = 0.0


def scrape(port: int) -> tuple[dict[str, float], float] | None:
    """Sums of the counters and broker_up, and the time the scrape took."""
    started = time.perf_counter()
    try:
        text = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None
    took = time.perf_counter() - started
    scraped = Scrape(text)
    return {name: scraped.total(name) for name in (*COUNTERS, "celery_prom_broker_up")}, took


def watch(port: int, seen: Observations, done: threading.Event) -> None:
    while not done.wait(1.0):
        result = scrape(port)
        seen.scrapes += 1
        if result is None:
            seen.failed_scrapes += 1
            continue
        sums, took = result
        seen.slowest = max(seen.slowest, took)
        seen.broker_up = sums.get("celery_prom_broker_up", 0.0)
        for name in COUNTERS:
            value = sums.get(name, 0.0)
            if value < seen.last.get(name, 0.0):
                seen.backwards.append(f"{name} {seen.last[name]:g} -> {value:g}")
            seen.last[name] = value


def produce(url: str, done: threading.Event) -> None:
    """Five tasks a second; sends that meet the outage are dropped, as a web app's would."""
    app = Celery("soak-producer", broker=url, set_as_current=False)
    while not done.wait(0.2):
        try:
            app.send_task("cptest_tasks.noop", queue=QUEUE, retry=False)
        except Exception:  # noqa: BLE001 - the broker is down on purpose
            continue


def resources(pid: int) -> tuple[int, int]:
    """Resident memory in KiB and open descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def start_processes(url: str, port: int, logdir: Path) -> list[subprocess.Popen[bytes]]:
    env = app_env(Broker(url), QUEUE, CPTEST_INSTRUMENTATION="none")
    exporter = exporter_command(url, port, "-Q", QUEUE, "--worker-timeout", "10")
    worker = worker_command(
        QUEUE,
        name=unique("soak"),
        pool="solo",
        concurrency=1,
        loglevel="WARNING",
        extra_args=("-E", "--without-gossip"),
    )
    processes = []
    for name, command in (("exporter", exporter), ("worker", worker)):
        with (logdir / f"{name}.log").open("wb") as log:
            processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log))
    return processes


def seconds_until_up(seen: Observations, limit: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if seen.broker_up == 1:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=20.0, help="seconds between kills")
    parser.add_argument("--down", type=float, default=3.0, help="seconds the broker stays down")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="celery-prom-soak-") as workdir:
        server = RedisServer(Path(workdir))
        server.start()
        url = server.url
        port = free_port()
        exporter, worker = start_processes(url, port, Path(workdir))
        seen, done = Observations(), threading.Event()
        threads = [
            threading.Thread(target=watch, args=(port, seen, done)),
            threading.Thread(target=produce, args=(url, done)),
        ]
        for thread in threads:
            thread.start()
        try:
            report(soak(options, server, exporter, seen), seen, exporter, workdir)
        finally:
            done.set()
            for thread in threads:
                thread.join()
            stop_process(worker)
            stop_process(exporter)
            server.stop()


@dataclass
class Soak:
    recoveries: list[float | None]
    start_resources: tuple[int, int]
    end_resources: tuple[int, int]


def soak(
    options: argparse.Namespace,
    server: RedisServer,
    exporter: subprocess.Popen[bytes],
    seen: Observations,
) -> Soak:
    if seconds_until_up(seen, 60) is None:
        raise SystemExit("the exporter never reported the broker up")
    deadline = time.monotonic() + options.minutes * 60
    recoveries: list[float | None] = []
    start_resources = None
    while time.monotonic() < deadline and exporter.poll() is None:
        time.sleep(options.period - options.down)
        server.stop()
        time.sleep(options.down)
        server.start()
        recoveries.append(seconds_until_up(seen, options.period))
        if start_resources is None:  # after the first outage: every code path has run once
            start_resources = resources(exporter.pid)
    assert start_resources is not None
    return Soak(recoveries, start_resources, resources(exporter.pid))


def report(
    result: Soak, seen: Observations, exporter: subprocess.Popen[bytes], workdir: str
) -> None:
    recovered = [seconds for seconds in result.recoveries if seconds is not None]
    (rss0, fds0), (rss1, fds1) = result.start_resources, result.end_resources
    print(
        json.dumps(
            {
                "broker restarts": len(result.recoveries),
                "exporter exited": exporter.poll() is not None,
                "broker_up back after restart, s (median / max)": (
                    round(statistics.median(recovered), 2) if recovered else None,
                    round(max(recovered), 2) if recovered else None,
                ),
                "restarts without broker_up back within a period": len(result.recoveries)
                - len(recovered),
                "scrapes answered / tried": f"{seen.scrapes - seen.failed_scrapes}/{seen.scrapes}",
                "slowest scrape, s": round(seen.slowest, 3),
                "counters that went backwards": seen.backwards,
                "final counters": seen.last,
                "RSS KiB after 1st outage -> end (ratio)": f"{rss0} -> {rss1} ({rss1 / rss0:.3f}x)",
                "open fds after 1st outage -> end": f"{fds0} -> {fds1}",
            },
            indent=2,
        )
    )
    if exporter.poll() is not None:
        print((Path(workdir) / "exporter.log").read_text()[-3000:])


if __name__ == "__main__":
    main()
