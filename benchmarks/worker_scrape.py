"""What scraping costs a busy worker: 2,000 task names, scraped 5 times a second.

One prefork -c 2 worker with ``celery_prom.install(app)`` on Redis, whose store holds the
series of 2,000 task names (one task of each runs first). Then rounds of no-op tasks that
cycle through the names, so every scrape finds as many series changed as tasks ran since
the last one (the worst case for the cache of rendered series). Each round runs the same
batch twice, in an order that alternates from round to round: once while nobody scrapes,
once while a client scrapes /metrics 5 times a second as Prometheus does (its ``Accept``
header, which gets OpenMetrics with exemplars, and gzip).

As in worker_overhead.py, each batch goes onto the queue at once and the window from 90 %
to 10 % of it left is timed. Over the window the benchmark reads the CPU time of the
worker's main process, which receives and acknowledges every task and also serves the
scrapes, from a thread that competes with the consumer for the GIL. Throughput on a shared
2-core machine moves by +-25 % from run to run; the main process's CPU time per task, and
what the scrapes add to it, is the steadier measure. The successes the worker counted are
checked against the tasks sent after every batch.

With ``--busy N`` the batches run the first N names only (the others' series stay on the
page, unchanged): the cost of the page itself, apart from rendering changed series again.

Run:  python benchmarks/worker_scrape.py [--names 2000] [--busy 2000] [--tasks 10000]
                                          [--rounds 5] [--rate 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import redis

# Run as a script: next to worker_overhead, and tests.support from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker_overhead import BROKER, DB, PREFIX, envelope, process_cpu, time_when_below

from tests.support import (
    REPO,
    app_env,
    endpoint_env,
    free_port,
    metric_sum,
    stop_process,
    unique,
    wait_for,
    worker_command,
)

SUCCEEDED = "celery_task_succeeded_total"
#: What Prometheus 2 asks for: OpenMetrics first (the page with exemplars), and gzip.
PROMETHEUS_HEADERS = {
    "Accept": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
    "Accept-Encoding": "gzip",
}
OPENMETRICS = "application/openmetrics-text"


@dataclass(frozen=True)
class Run:
    tasks: float  # tasks in the window
    seconds: float  # the window's length
    main_cpu: float  # CPU seconds of the worker's main process over the window
    scrapes: int  # scrapes that ended in the window

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_per_task(self) -> float:
        return self.main_cpu / self.tasks

    def __str__(self) -> str:
        scraped = f"  {self.scrapes} scrapes ({self.scrapes / self.seconds:.1f}/s)"
        return f"{self.rate:7.1f} tasks/s  main {self.cpu_per_task * 1e6:7.1f} us/task" + (
            scraped if self.scrapes else ""
        )


class Scraper:
    """Scrapes /metrics from a thread ``rate`` times a second (never, at 0), with
    Prometheus' headers.

    Like Prometheus, it never runs two scrapes at once, nor hurries to catch up on a
    scrape that ended late; unlike it, it does not decompress or parse the page, so that it
    takes as little CPU from the worker's machine as it can. Records when each scrape
    ended, and the last page it got.
    """

    def __init__(self, port: int, rate: float) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._rate = rate
        self.ended: list[float] = []
        self.page = b""  # as sent: gzip
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        if self._rate:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        if self._rate:
            self._thread.join()

    def ended_between(self, start: float, end: float) -> int:
        return sum(1 for ended in self.ended if start <= ended <= end)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stopped.wait(max(0.0, due - time.monotonic())):
            self._scrape()
            self.ended.append(time.monotonic())
            due = max(due + 1 / self._rate, time.monotonic())

    def _scrape(self) -> None:
        request = urllib.request.Request(self._url, headers=PROMETHEUS_HEADERS)
        with urllib.request.urlopen(request, timeout=60) as response:
            self.page = response.read()
            encoding = response.headers.get("Content-Encoding")
            content_type = response.headers.get("Content-Type", "")
        # The cost of another page would be moot: it must be what Prometheus gets.
        if encoding != "gzip" or not content_type.startswith(OPENMETRICS):
            raise RuntimeError(f"scraped {content_type!r} with encoding {encoding!r}")


@dataclass
class BenchWorker:
    """The worker under test: a prefork -c 2 worker of the many-names app with the
    bootstep, consuming a queue of its own."""

    client: redis.Redis
    queue: str
    names: int
    process: subprocess.Popen[bytes]
    port: int
    counted: int = 0  # successes it must have counted by now

    @classmethod
    def start(cls, client: redis.Redis, names: int, log: Path) -> BenchWorker:
        queue, port = unique("scrape"), free_port()
        env = app_env(BROKER, queue, CPTEST_TASK_NAMES=str(names), **endpoint_env(port))
        command = worker_command(
            queue, name=unique("scraped"), app_module="cptest_names", loglevel="WARNING"
        )
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
            )
        return cls(client, queue, names, process, port)

    def warm_up(self) -> None:
        """One task of each name, so the store holds every name's series."""
        wait_for(lambda: metric_sum(self.port, SUCCEEDED) is not None, timeout=60, what="worker")
        self.push(self.names, self.names)
        self.wait_until_counted()

    def run_batch(self, tasks: int, busy: int, rate: float) -> tuple[Run, Scraper]:
        """A batch of ``tasks`` over the first ``busy`` names, scraped ``rate`` times a
        second (0: not at all)."""
        with Scraper(self.port, rate) as scraper:
            self.push(tasks, busy)
            start = time_when_below(self.client, self.queue, 0.9 * tasks)
            cpu_start = process_cpu(self.process.pid)
            end = time_when_below(self.client, self.queue, 0.1 * tasks)
            cpu_end = process_cpu(self.process.pid)
        self.wait_until_counted()
        scrapes = scraper.ended_between(start, end)
        return Run(0.8 * tasks, end - start, cpu_end - cpu_start, scrapes), scraper

    def push(self, tasks: int, names: int) -> None:
        """``tasks`` no-op tasks cycling through the first ``names`` names, onto the queue
        in one command (so the worker never sees a part of the batch)."""
        messages = [
            json.dumps(envelope(self.queue, f"cptest_names.task_{index % names:04}"))
            for index in range(tasks)
        ]
        self.client.lpush(PREFIX + self.queue, *messages)
        self.counted += tasks

    def wait_until_counted(self) -> None:
        """Every task sent so far counted as a success, exactly (a benchmark of a wrong
        tool is moot); this also keeps one batch's tail out of the next one's window."""

        def all_counted() -> float | None:
            counted = metric_sum(self.port, SUCCEEDED)
            return counted if counted is not None and counted >= self.counted else None

        counted = wait_for(all_counted, timeout=300, interval=0.5, what="successes counted")
        if counted != self.counted:
            raise RuntimeError(f"the worker counted {counted} successes of {self.counted} tasks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=2000, help="task names (2000)")
    parser.add_argument("--tasks", type=int, default=10000, help="tasks per batch (10000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--rate", type=float, default=5.0, help="scrapes per second (5)")
    parser.add_argument("--busy", type=int, help="names the batches run (all)")
    options = parser.parse_args()
    client = redis.Redis(host="127.0.0.1", port=6379, db=DB)
    with tempfile.TemporaryDirectory() as logs:
        worker = BenchWorker.start(client, options.names, Path(logs) / "worker.log")
        try:
            worker.warm_up()
            busy = options.busy or options.names
            runs = _rounds(worker, (options.tasks, busy), options.rounds, options.rate)
        finally:
            stop_process(worker.process, 60)
            leftovers = list(client.scan_iter(match=f"{PREFIX}*"))
            if leftovers:
                client.delete(*leftovers)
    _report(runs, options.rate)
    print(
        f"(no-op tasks of {options.busy or options.names} of {options.names} task names, "
        f"prefork -c 2, Redis, {options.tasks} tasks x {options.rounds} rounds, medians)"
    )


def _rounds(
    worker: BenchWorker, batch: tuple[int, int], rounds: int, rate: float
) -> dict[str, list[Run]]:
    """Both configs each round, the first of them alternating; ``batch`` is (tasks, names
    they cycle through)."""
    tasks, busy = batch
    runs: dict[str, list[Run]] = {"quiet": [], "scraped": []}
    for round_number in range(rounds):
        order = ["quiet", "scraped"] if round_number % 2 == 0 else ["scraped", "quiet"]
        for config in order:
            run, scraper = worker.run_batch(tasks, busy, rate if config == "scraped" else 0.0)
            runs[config].append(run)
            print(f"round {round_number + 1} {config:8s} {run}", flush=True)
            if scraper.page and round_number == 0:
                text = len(gzip.decompress(scraper.page))
                print(f"  (pages of {len(scraper.page) / 1e6:.2f} MB gzip, {text / 1e6:.1f} MB)")
    return runs


def _report(runs: dict[str, list[Run]], rate: float) -> None:
    quiet, scraped = runs["quiet"], runs["scraped"]
    quiet_rate = statistics.median(run.rate for run in quiet)
    quiet_cpu = statistics.median(run.cpu_per_task for run in quiet)
    scraped_rate = statistics.median(run.rate for run in scraped)
    scraped_cpu = statistics.median(run.cpu_per_task for run in scraped)
    # Each scraped run against the quiet run of its own round: what its scrapes added.
    per_scrape = statistics.median(
        (loud.main_cpu - calm.cpu_per_task * loud.tasks) / loud.scrapes
        for loud, calm in zip(scraped, quiet, strict=True)
    )
    print()
    print(f"  {'':10s} {'tasks/s':>8s}  {'main process CPU per task':>26s}")
    print(f"  {'quiet':10s} {quiet_rate:8.1f}  {quiet_cpu * 1e6:21.1f} us")
    print(
        f"  {'scraped':10s} {scraped_rate:8.1f}  {scraped_cpu * 1e6:21.1f} us   "
        f"({scraped_rate / quiet_rate:.3f}x quiet tasks/s, "
        f"{quiet_cpu / scraped_cpu:.3f}x if main-process bound)"
    )
    print(
        f"  one scrape: {per_scrape * 1e3:.1f} ms of main-process CPU "
        f"(as much as {per_scrape / quiet_cpu:.0f} tasks); {rate:g} scrapes/s take "
        f"{per_scrape * rate:.1%} of a CPU"
    )


if __name__ == "__main__":
    main()
