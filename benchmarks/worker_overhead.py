"""What the worker bootstep costs: throughput of no-op tasks, prefork -c 2, Redis.

Three workers, run in interleaved rounds so machine noise hits them alike:

* plain     — Celery as is, no task events;
* bootstep  — the same worker with ``celery_prom.install(app)``;
* events    — the plain worker with ``-E`` (what event-based exporters need).

Each round pre-loads the queue with N messages, starts the worker, and times the drain from
90% to 10% of the queue left (steady state: pool warm-up and the last prefetched tasks are
outside the window). Over the same window it reads the CPU time the worker's main process
and its pool children used (from /proc), a steadier measure of what the bootstep costs than
throughput on a busy 2-core machine. The bootstep worker's own counters are checked against
N at the end.

Throughput and CPU time on a shared 2-core machine vary by +-25 % or more from round to
round. With ``--instructions`` each worker instead runs under ``valgrind --tool=callgrind``
(Debian package ``valgrind``), which counts the instructions its main process executes over
the same window, whatever else the machine is doing: the steady measure of the bootstep's
cost.

Run:  python benchmarks/worker_overhead.py [--tasks 10000] [--rounds 5]
      python benchmarks/worker_overhead.py --instructions [--tasks 1500] [--rounds 1]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis

# Run as a script: tests.support from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import (
    REPO,
    Broker,
    app_env,
    free_port,
    stop_process,
    try_scrape,
    unique,
    wait_for,
    worker_command,
)

T = TypeVar("T")
DB = 12
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PREFIX = f"cpbench-{uuid.uuid4().hex[:8]}:"
BROKER = Broker(f"redis://127.0.0.1:6379/{DB}", {"global_keyprefix": PREFIX})
SUCCEEDED = "celery_task_succeeded_total"
CONFIGS = {
    "plain": ("none", ()),
    "bootstep": ("install", ()),
    "events": ("none", ("-E",)),
}


def envelope(queue: str, task: str = "cptest_tasks.noop") -> dict[str, object]:
    """A message of ``task`` without arguments as kombu's Redis transport stores it."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = base64.b64encode(json.dumps([[], {}, embed]).encode()).decode()
    task_id = str(uuid.uuid4())
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": "{}",
            "origin": "bench",
            "ignore_result": True,
            "celery_prom_sent_at": time.time(),
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def preload(client: redis.Redis, queue: str, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        pipe.lpush(PREFIX + queue, json.dumps(envelope(queue)))
        if index % 5000 == 4999:
            pipe.execute()
    pipe.execute()


@dataclass(frozen=True)
class Run:
    rate: float  # tasks per second
    main_cpu: float  # CPU microseconds per task in the worker's main process
    pool_cpu: float  # CPU microseconds per task in its pool children

    def __str__(self) -> str:
        return (
            f"{self.rate:8.1f} tasks/s  main {self.main_cpu:7.1f} us/task  "
            f"pool {self.pool_cpu:7.1f} us/task"
        )


@dataclass(frozen=True)
class Instructions:
    per_task: float  # instructions per task in the worker's main process

    def __str__(self) -> str:
        return f"main {self.per_task:12,.0f} instructions/task"


def start_worker(
    config: str, queue: str, log: Path, wrapper: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """A prefork -c 2 worker of ``config`` consuming ``queue``, and its metrics port."""
    instrumentation, extra = CONFIGS[config]
    port = free_port()
    env = app_env(
        BROKER,
        queue,
        CPTEST_INSTRUMENTATION=instrumentation,
        CELERY_PROM_PORT=str(port),
        CELERY_PROM_HOST="127.0.0.1",
    )
    command = worker_command(queue, name=unique(config), loglevel="WARNING", extra_args=extra)
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [*wrapper, *command], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    return worker, port


def run_once(client: redis.Redis, config: str, tasks: int, logdir: Path) -> Run:
    queue = unique("bench")
    preload(client, queue, tasks)
    worker, port = start_worker(config, queue, logdir / f"{config}-{queue}.log")
    try:
        start = time_when_below(client, queue, 0.9 * tasks)
        main_start, pool_start = _cpu_seconds(worker.pid)
        end = time_when_below(client, queue, 0.1 * tasks)
        main_end, pool_end = _cpu_seconds(worker.pid)
        measured = 0.8 * tasks
        if config == "bootstep":
            _check_counts(port, queue, tasks)
        return Run(
            rate=measured / (end - start),
            main_cpu=(main_end - main_start) / measured * 1e6,
            pool_cpu=(pool_end - pool_start) / measured * 1e6,
        )
    finally:
        stop_process(worker, 60)
        client.delete(PREFIX + queue)


def count_instructions(client: redis.Redis, config: str, tasks: int, logdir: Path) -> Instructions:
    """Instructions per task of the worker's main process while it drains the queue.

    Counting is switched on when 90 % of the queue is left and off at 30 % (under valgrind
    the worker is slow, so the window is shorter than the throughput run's).
    """
    queue = unique("bench")
    preload(client, queue, tasks)
    profile = logdir / f"{config}-{queue}.callgrind"
    wrapper = (
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={profile}.%p",
    )
    worker, _ = start_worker(config, queue, logdir / f"{config}-{queue}.log", wrapper)
    try:
        time_when_below(client, queue, 0.9 * tasks)
        first = _switch_counting(worker.pid, "on", client, queue)
        time_when_below(client, queue, 0.3 * tasks)
        last = _switch_counting(worker.pid, "off", client, queue)
    finally:
        stop_process(worker, 300)  # callgrind writes the counts as the worker exits
        client.delete(PREFIX + queue)
    # The children, forked from it, write their own files; the main process's has its pid.
    totals = re.search(r"^totals: (\d+)", Path(f"{profile}.{worker.pid}").read_text(), re.M)
    if totals is None:
        raise RuntimeError(f"no instruction count in {profile}.{worker.pid}")
    return Instructions(int(totals.group(1)) / (first - last))


def _switch_counting(pid: int, state: str, client: redis.Redis, queue: str) -> float:
    """Turn callgrind's counting on or off; the queue length at that moment (the mean of
    the readings on either side of the switch)."""
    before = client.llen(PREFIX + queue)
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)
    return (before + client.llen(PREFIX + queue)) / 2


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of a process and, separately, of its children."""
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(child) for child in children_file.read_text().split()]
    return process_cpu(pid), sum(process_cpu(child) for child in children)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid``, all its threads, used so far."""
    # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def time_when_below(client: redis.Redis, queue: str, level: float) -> float:
    """When (on the monotonic clock) ``queue`` first holds fewer than ``level`` messages."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if client.llen(PREFIX + queue) < level:
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"queue {queue} did not drain below {level}")


def _check_counts(port: int, queue: str, tasks: int) -> None:
    """The bootstep must have counted every task exactly (a benchmark of a wrong tool is moot)."""

    def all_counted() -> float | None:
        scraped = try_scrape(port)
        succeeded = 0.0 if scraped is None else scraped.total(SUCCEEDED, queue_name=queue)
        return succeeded if succeeded >= tasks else None

    succeeded = wait_for(all_counted, timeout=120, what=f"{tasks} successes counted")
    if succeeded != tasks:
        raise RuntimeError(f"bootstep counted {succeeded} successes of {tasks} tasks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--tasks", type=int, help="tasks per run (10000; 1500 counting)")
    parser.add_argument("--rounds", type=int, help="rounds (5; 1 counting)")
    options = parser.parse_args()
    if options.instructions and shutil.which("callgrind_control") is None:
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    tasks = options.tasks or (1500 if options.instructions else 10000)
    rounds = options.rounds or (1 if options.instructions else 5)
    client = redis.Redis(host="127.0.0.1", port=6379, db=DB)
    with tempfile.TemporaryDirectory() as logs:
        try:
            if options.instructions:
                _report_instructions(_rounds(rounds, count_instructions, client, tasks, logs))
            else:
                _report_throughput(_rounds(rounds, run_once, client, tasks, logs))
        finally:
            leftovers = list(client.scan_iter(match=f"{PREFIX}*"))
            if leftovers:
                client.delete(*leftovers)
    print(f"(no-op tasks, prefork -c 2, Redis, {tasks} tasks x {rounds} rounds, medians)")


def _rounds(
    rounds: int,
    measure: Callable[[redis.Redis, str, int, Path], T],
    client: redis.Redis,
    tasks: int,
    logs: str,
) -> dict[str, list[T]]:
    """Every config measured ``rounds`` times, in an order that rotates each round."""
    order = list(CONFIGS)
    results: dict[str, list[T]] = {config: [] for config in CONFIGS}
    for round_number in range(rounds):
        shift = round_number % len(order)
        for config in order[shift:] + order[:shift]:
            result = measure(client, config, tasks, Path(logs))
            results[config].append(result)
            print(f"round {round_number + 1} {config:9s} {result}", flush=True)
    return results


def _report_throughput(runs: dict[str, list[Run]]) -> None:
    print()
    plain = _medians(runs["plain"])
    for config, config_runs in runs.items():
        rate, main_cpu, pool_cpu = _medians(config_runs)
        print(
            f"  {config:9s} {rate:8.1f} tasks/s ({rate / plain[0]:.3f}x plain)   "
            f"main process {main_cpu:7.1f} us/task ({main_cpu - plain[1]:+6.1f})   "
            f"pool {pool_cpu:7.1f} us/task"
        )


def _report_instructions(counts: dict[str, list[Instructions]]) -> None:
    print()
    plain = statistics.median(run.per_task for run in counts["plain"])
    for config, config_counts in counts.items():
        per_task = statistics.median(run.per_task for run in config_counts)
        print(
            f"  {config:9s} main process {per_task / 1e6:6.3f} M instructions/task "
            f"({per_task / plain:.3f}x plain, {per_task - plain:+,.0f})"
        )


def _medians(runs: list[Run]) -> tuple[float, float, float]:
    return (
        statistics.median(run.rate for run in runs),
        statistics.median(run.main_cpu for run in runs),
        statistics.median(run.pool_cpu for run in runs),
    )


if __name__ == "__main__":
    main()
