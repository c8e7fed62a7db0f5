"""Scrape cost at high cardinality: 1,000 task names x 20 workers (20,000 task series).

    .venv/bin/python benchmarks/exporter_scrape.py [--names 1000] [--workers 20]

1. In process, the same store rendered two ways: prometheus_client's generic
   ``generate_latest`` of a registry holding the store (its ``collect()``), and
   ``TaskExposition``, which keeps each series' text until the series changes. Warm
   renders are measured with 0 %, 1 % and 10 % of the series changed since the last one;
   then gzip of the page at the endpoint's level and at prometheus_client's (9).
2. End to end: a real ``celery-prom exporter`` on a private redis-server, fed the series
   through task events; full ``/metrics`` scrapes over HTTP (plain and gzip), then the
   same event flood with and without a client scraping back to back, to show that
   ingestion is not stalled while scrapes render.

Numbers are medians of several runs (max in brackets where it matters).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from celery_prom.exposition import TaskExposition
from celery_prom.http import GZIP_LEVEL
from celery_prom.store import RECEIVED, TaskStore

# Run as a script: next to exporter_events, and tests.support from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter_events import envelope, run_flood

from tests.support import (
    REPO,
    exporter_command,
    free_port,
    metric_sum,
    private_redis,
    stop_process,
    wait_for,
)

RUNS = 5


def timed(work: Callable[[], object], runs: int = RUNS) -> list[float]:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        durations.append(time.perf_counter() - started)
    return durations


def describe(durations: list[float]) -> str:
    return f"median {statistics.median(durations):7.3f}s  [max {max(durations):.3f}s]"


# -- 1. in process ----------------------------------------------------------------------------


def filled_store(names: int, workers: int, rng: random.Random) -> TaskStore:
    store = TaskStore()
    for n in range(names):
        for w in range(workers):
            key = (f"proj.tasks.task_{n:04}", f"celery@worker-{w:02}", "celery")
            for _ in range(3):
                store.count(key, RECEIVED)
                store.count_start(key, rng.expovariate(10))
                if rng.random() < 0.9:
                    store.count_success(key, rng.expovariate(5))
                else:
                    store.count_failure(key, rng.choice(["ValueError", "TimeoutError"]))
    return store


def touch(store: TaskStore, fraction: float, rng: random.Random) -> None:
    keys = [key for key, _ in store.versions()]
    for key in rng.sample(keys, int(len(keys) * fraction)):
        store.count(key, RECEIVED)


def in_process(names: int, workers: int) -> dict[str, object]:
    rng = random.Random(1)
    store = filled_store(names, workers, rng)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(store)
    generic = timed(functools.partial(generate_latest, registry))
    exposition = TaskExposition(store)
    cold = timed(exposition.render, runs=1)
    series, size = len(store.versions()), len(exposition.render())
    result: dict[str, object] = {
        "series": series,
        "bytes": size,
        "generic": generic,
        "incremental_cold": cold,
    }
    print(f"{series} series, {size / 1e6:.1f} MB of text")
    print(f"  prometheus_client generate_latest   {describe(generic)}")
    print(f"  TaskExposition, first render        {describe(cold)}")
    for fraction in (0.0, 0.01, 0.10):
        durations = []
        for _ in range(RUNS):
            touch(store, fraction, rng)
            durations += timed(exposition.render, runs=1)
        result[f"incremental_{int(fraction * 100)}pct_changed"] = durations
        print(f"  TaskExposition, {fraction:4.0%} changed       {describe(durations)}")
    page = exposition.render()
    for level in (GZIP_LEVEL, 9):
        durations = timed(functools.partial(gzip.compress, page, compresslevel=level), runs=3)
        size = len(gzip.compress(page, compresslevel=level))
        result[f"gzip_level_{level}"] = {"durations": durations, "bytes": size}
        print(f"  gzip level {level}, {size / 1e6:5.2f} MB          {describe(durations)}")
    return result


# -- 2. end to end ----------------------------------------------------------------------------


def feed_series(redis_port: int, names: int, workers: int) -> int:
    """received, started and succeeded (or failed) of one task per series; returns events."""
    client = redis.Redis(port=redis_port)
    pipe = client.pipeline(transaction=False)
    rng = random.Random(2)
    clocks = dict.fromkeys(range(workers), 0)
    sent = 0
    now = time.time()
    for n in range(names):
        for w in range(workers):
            hostname = f"celery@worker-{w:02}"
            task_id = str(uuid.uuid4())
            outcome = (
                ("task-succeeded", {"runtime": rng.expovariate(5)})
                if rng.random() < 0.9
                else ("task-failed", {"exception": "ValueError('x')"})
            )
            for type_, fields in (
                ("task-received", {"name": f"proj.tasks.task_{n:04}"}),
                ("task-started", {}),
                outcome,
            ):
                clocks[w] += 1
                event = {
                    "type": type_,
                    "hostname": hostname,
                    "uuid": task_id,
                    "clock": clocks[w],
                    "timestamp": now,
                    "utcoffset": 0,
                    "pid": 1,
                    **fields,
                }
                routing_key = type_.replace("-", ".")
                pipe.publish(f"/0.celeryev/{routing_key}", envelope(event, routing_key))
                sent += 1
        if n % 50 == 49:
            pipe.execute()
            time.sleep(0.15)  # about 20,000 events/s: well within what the exporter takes
    pipe.execute()
    return sent


def scrape_once(port: int, gzip: bool) -> int:
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return len(response.read())


class BackToBackScraper:
    """Scrapes /metrics in a loop from a thread, recording each scrape's duration."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.durations: list[float] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackToBackScraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.durations += timed(lambda: scrape_once(self._port, gzip=False), runs=1)


def flood_counted(
    port: int, redis_port: int, rate: int, seconds: float, clock: int
) -> dict[str, float]:
    """Floods, then polls until the count settles. Polling is a full scrape itself, so it
    only starts once the flood is over; ``caught_up_after`` is when the last event was
    counted, measured from the end of the flood (polls are about a second apart)."""
    before = metric_sum(port, "celery_prom_events_received_total") or 0
    sent, _ = run_flood(redis_port, rate, seconds, clock, lambda: None)
    ended = time.monotonic()
    last, last_change = before, ended
    while time.monotonic() - last_change < 3:
        current = metric_sum(port, "celery_prom_events_received_total") or 0
        if current != last:
            last, last_change = current, time.monotonic()
        time.sleep(0.1)
    processed = last - before
    return {
        "sent": sent,
        "processed": processed,
        "lost": sent - processed,
        "caught_up_after": last_change - ended,
    }


def end_to_end(names: int, workers: int, flood_rate: int, seconds: float) -> dict[str, object]:
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as workdir, private_redis(Path(workdir)) as server:
        redis_port = server.port
        port = free_port()
        command = exporter_command(server.url, port, "--log-level", "WARNING")
        exporter = subprocess.Popen(command, cwd=REPO)
        try:
            wait_for(
                lambda: metric_sum(port, "celery_prom_broker_up") == 1, timeout=60, what="exporter"
            )
            sent = feed_series(redis_port, names, workers)
            wait_for(
                lambda: metric_sum(port, "celery_prom_events_received_total") == sent,
                timeout=300,
                what=f"{sent} events counted",
            )
            plain = timed(lambda: scrape_once(port, gzip=False))
            gzipped = timed(lambda: scrape_once(port, gzip=True))
            size, size_gz = scrape_once(port, gzip=False), scrape_once(port, gzip=True)
            print(
                f"exporter /metrics with {names * workers} task series "
                f"({size / 1e6:.1f} MB, gzip {size_gz / 1e6:.2f} MB)"
            )
            print(f"  full scrape over HTTP               {describe(plain)}")
            print(f"  full scrape over HTTP, gzip         {describe(gzipped)}")
            result.update(scrape=plain, scrape_gzip=gzipped, bytes=size, bytes_gzip=size_gz)
            quiet = flood_counted(port, redis_port, flood_rate, seconds, 50_000_000)
            with BackToBackScraper(port) as scraper:
                busy = flood_counted(port, redis_port, flood_rate, seconds, 60_000_000)
            result.update(
                flood_without_scrapes=quiet,
                flood_with_scrapes=busy,
                scrapes_during_flood=scraper.durations,
            )
            for label, numbers in (("without scrapes", quiet), ("scraping back to back", busy)):
                print(
                    f"  flood of {flood_rate}/s {label:22} processed {numbers['processed']:.0f}"
                    f"/{numbers['sent']}  lost {numbers['lost']:.0f}  "
                    f"last counted {numbers['caught_up_after']:.1f}s after the flood"
                )
            print(
                f"  {len(scraper.durations)} scrapes during the flood     "
                f"{describe(scraper.durations)}"
            )
        finally:
            stop_process(exporter)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--flood-rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {
        "in_process": in_process(args.names, args.workers),
        "end_to_end": end_to_end(args.names, args.workers, args.flood_rate, args.seconds),
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
