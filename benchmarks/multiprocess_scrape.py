"""Scrape cost of user metrics as pool children come and go: plain multiprocess mode
(prometheus_client's ``MultiProcessCollector``) against celery-prom's compacted directory.

Forked children each update a Counter and a Histogram (default buckets) for every one of
``--label-sets`` label values, then exit, as recycled prefork children do; ``--live``
children stay alive throughout. The directory is copied after 1, 64 and 256 such children,
twice: one copy for each collector (celery-prom's first scrape compacts its copy). Both must
render the same samples. Then full text renderings are timed round-robin over the stages, so
that load from other processes on the machine falls on every stage alike.

    .venv/bin/python benchmarks/multiprocess_scrape.py [--children 1,64,256]
"""

from __future__ import annotations

import os
import tempfile

# prometheus_client picks multiprocess mode when it is first imported: directory first.
WRITTEN = tempfile.mkdtemp(prefix="celery-prom-bench-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = WRITTEN

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

from celery_prom.multiprocess import MultiprocessDirectory  # noqa: E402

ORDERS = Counter("bench_orders", "Orders.", ["kind"])
AMOUNTS = Histogram("bench_order_amount", "Order amounts.", ["kind"])


@dataclass
class Stage:
    recycled: int
    plain: CollectorRegistry
    compacted: CollectorRegistry
    first_scrape_ms: float  # includes compacting every child that died before it
    plain_ms: list[float] = field(default_factory=list)
    compacted_ms: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", default="1,64,256", help="recycled children per stage")
    parser.add_argument("--label-sets", type=int, default=100)
    parser.add_argument("--live", type=int, default=2, help="children alive throughout")
    parser.add_argument("--repeat", type=int, default=20, help="scrapes timed per stage")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    counts = sorted(int(count) for count in args.children.split(","))
    written = Path(WRITTEN)
    copies = Path(tempfile.mkdtemp(prefix="celery-prom-bench-compacted-"))

    def work() -> None:
        for index in range(args.label_sets):
            ORDERS.labels(f"kind-{index}").inc()
            AMOUNTS.labels(f"kind-{index}").observe(index % 7)

    stages = []
    try:
        # The live children's pids must stay alive while their files are read.
        with live_children(args.live, work):
            recycled = 0
            for count in counts:
                while recycled < count:
                    run_child(work)
                    recycled += 1
                stages.append(snapshot(written, copies / str(count), recycled))
            for round_ in range(args.repeat):
                for stage in stages:
                    stage.compacted_ms.append(timed(partial(generate_latest, stage.compacted)))
                    # Plain mode takes seconds at hundreds of children: a quarter as often.
                    if round_ % 4 == 0:
                        stage.plain_ms.append(timed(partial(generate_latest, stage.plain)))
    finally:
        shutil.rmtree(written)
        shutil.rmtree(copies)
    report(stages, args)


def snapshot(written: Path, copies: Path, recycled: int) -> Stage:
    shutil.copytree(written, copies / "plain")
    shutil.copytree(written, copies / "compacted")
    plain = CollectorRegistry()
    MultiProcessCollector(plain, path=str(copies / "plain"))  # type: ignore[no-untyped-call]
    compacted = CollectorRegistry()
    compacted.register(MultiprocessDirectory(copies / "compacted", os.getpid()))

    first = timed(lambda: generate_latest(compacted))
    same = sorted(generate_latest(plain).splitlines()) == sorted(
        generate_latest(compacted).splitlines()
    )
    assert same, "the compacted directory must report what plain mode reports"
    return Stage(recycled, plain, compacted, first_scrape_ms=first)


def report(stages: list[Stage], args: argparse.Namespace) -> None:
    print(
        f"{args.label_sets} label sets of a counter and a histogram per child, {args.live} "
        f"children alive throughout. Milliseconds per text rendering, median (min) of "
        f"{args.repeat} (plain mode: {len(stages[0].plain_ms)}).\n"
    )
    print(f"{'recycled':>8}  {'plain':>15}  {'celery-prom':>15}  {'first scrape':>12}")
    for stage in stages:
        print(
            f"{stage.recycled:>8}  {summary(stage.plain_ms):>15}  "
            f"{summary(stage.compacted_ms):>15}  {stage.first_scrape_ms * 1000:>12.1f}"
        )
    first, last = stages[0], stages[-1]
    print(
        f"\ncelery-prom after {last.recycled} children: {ratios(first, last, 'compacted_ms')} "
        f"its time after {first.recycled} (target <= 1.5x); plain mode: "
        f"{ratios(first, last, 'plain_ms')}."
    )


def ratios(first: Stage, last: Stage, timings: str) -> str:
    before, after = getattr(first, timings), getattr(last, timings)
    median = statistics.median(after) / statistics.median(before)
    return f"{median:.2f}x (min: {min(after) / min(before):.2f}x)"


def summary(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:.1f} ({min(seconds) * 1000:.1f})"


def run_child(work: Callable[[], None]) -> None:
    pid = os.fork()
    if pid == 0:
        work()
        os._exit(0)
    os.waitpid(pid, 0)


@contextmanager
def live_children(count: int, work: Callable[[], None]) -> Iterator[None]:
    """Children that have done their work and wait until the block ends."""
    pids = []
    hold, release = os.pipe()
    ready, done = os.pipe()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(release)
            work()
            os.write(done, b".")
            os.read(hold, 1)
            os._exit(0)
        pids.append(pid)
    os.close(hold)
    for _ in range(count):
        os.read(ready, 1)
    try:
        yield
    finally:
        os.close(release)
        for pid in pids:
            os.waitpid(pid, 0)


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
