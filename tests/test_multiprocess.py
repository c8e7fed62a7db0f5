"""The multiprocess directory: setup checks, wipe, lock, compaction and aggregation.

Metric files are written by real Python processes in prometheus_client's multiprocess mode
(this test process imported prometheus_client without it), or, where a test needs many
processes or exact control, directly in prometheus_client's file format under pids that
cannot exist (above Linux's largest pid).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from celery_prom.faults import Faults
from celery_prom.multiprocess import (
    MultiprocessDirectory,
    MultiprocessMetrics,
    SetupError,
    configured_directory,
)
from tests.support import GAUGE_MODES, wait_for

#: Linux pids stay below 2**22; these name processes that cannot be alive.
IMPOSSIBLE_PID = 5_000_000
LIVE_MODES = tuple(mode for mode in GAUGE_MODES if mode.startswith("live"))

WRITER = """
import sys
from prometheus_client import Counter, Gauge, Histogram, Summary

value = float(sys.argv[1])
Counter("t_orders", "Orders.", ["kind"]).labels("a").inc(value)
Histogram("t_amount", "Amounts.", ["kind"], buckets=(1, 10)).labels("a").observe(value)
Summary("t_latency", "Latency.", ["kind"]).labels("a").observe(value)
for mode in sys.argv[2].split(","):
    Gauge("t_level_" + mode, "Level.", ["slot"], multiprocess_mode=mode).labels("x").set(value)
print("written", flush=True)
sys.stdin.read()
"""


class Writer:
    """A Python process that writes one value to every kind of metric, then waits."""

    def __init__(self, directory: Path, value: float) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(value), ",".join(GAUGE_MODES)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "written\n"

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit(self) -> None:
        self.process.communicate("", timeout=30)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


def samples(metrics: Iterable[Metric]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in metrics
        for sample in metric.samples
    }


def plain_view(directory: Path, dead: Iterable[int], scratch: Path) -> dict[object, float]:
    """What prometheus_client itself reports, with ``mark_process_dead`` called for ``dead``."""
    copy = scratch / "plain"
    shutil.copytree(directory, copy)
    for pid in dead:
        mark_process_dead(pid, str(copy))
    return dict(samples(MultiProcessCollector(None, path=str(copy)).collect()))


def owned(directory: Path) -> MultiprocessDirectory:
    return MultiprocessDirectory(directory, os.getpid())


def write_entries(path: Path, entries: dict[str, tuple[float, float]]) -> None:
    mapped = MmapedDict(str(path))
    for key, (value, timestamp) in entries.items():
        mapped.write_value(key, value, timestamp)
    mapped.close()


def counter_key(name: str, kind: str) -> str:
    return mmap_key(name, f"{name}_total", ["kind"], [kind], "Orders.")


def total(metrics: Iterable[Metric], sample_name: str) -> float:
    return sum(value for (name, _), value in samples(metrics).items() if name == sample_name)


# -- setup checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "multiprocess", "expected"),
    [
        ({}, False, None),
        ({"PROMETHEUS_MULTIPROC_DIR": "/run/m"}, True, "/run/m"),
        ({"prometheus_multiproc_dir": "/run/m"}, True, "/run/m"),
    ],
)
def test_the_directory_comes_from_the_variable_prometheus_client_reads(
    env: dict[str, str], multiprocess: bool, expected: str | None
) -> None:
    assert configured_directory(env, multiprocess) == expected


@pytest.mark.parametrize(
    ("env", "multiprocess", "message"),
    [
        (
            {"PROMETHEUS_MULTIPROC_DIR": "/run/m"},
            False,
            "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported; set it in "
            "the worker's environment before Python starts",
        ),
        (
            {},
            True,
            "prometheus_client is in multiprocess mode but PROMETHEUS_MULTIPROC_DIR is empty "
            "or was unset after it was imported",
        ),
        (
            {"PROMETHEUS_MULTIPROC_DIR": ""},
            True,
            "prometheus_client is in multiprocess mode but PROMETHEUS_MULTIPROC_DIR is empty "
            "or was unset after it was imported",
        ),
    ],
)
def test_a_half_set_up_mode_is_a_one_line_error(
    env: dict[str, str], multiprocess: bool, message: str
) -> None:
    with pytest.raises(SetupError) as raised:
        configured_directory(env, multiprocess)
    assert str(raised.value) == message


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SetupError) as raised:
        MultiprocessMetrics.claim(str(tmp_path / "missing"), (), Faults())
    missing = tmp_path / "missing"
    assert str(raised.value) == f"PROMETHEUS_MULTIPROC_DIR={missing} is not a directory"


def test_a_directory_that_cannot_be_written_is_refused() -> None:
    # sysfs refuses new files even to root, where permission bits would not.
    with pytest.raises(SetupError) as raised:
        MultiprocessMetrics.claim("/sys", (), Faults())
    assert str(raised.value) == "PROMETHEUS_MULTIPROC_DIR=/sys is not writable (Permission denied)"


HOLDER = """
import sys
from celery_prom.faults import Faults
from celery_prom.multiprocess import MultiprocessMetrics
held = MultiprocessMetrics.claim(sys.argv[1], (), Faults())
print("claimed", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def claimed_elsewhere(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "claimed\n"
    yield holder
    holder.kill()
    holder.wait(30)


def test_a_directory_another_worker_owns_is_refused_until_that_worker_is_gone(
    tmp_path: Path, claimed_elsewhere: subprocess.Popen[str]
) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"")

    with pytest.raises(SetupError) as raised:
        MultiprocessMetrics.claim(str(tmp_path), (), Faults())

    assert str(raised.value) == (
        f"PROMETHEUS_MULTIPROC_DIR={tmp_path} is in use by another worker "
        f"(pid {claimed_elsewhere.pid}); give each worker a directory of its own"
    )
    assert (tmp_path / "counter_123.db").exists()  # not wiped under the other worker
    claimed_elsewhere.kill()  # the kernel drops the lock of a killed process
    claimed_elsewhere.wait(30)
    MultiprocessMetrics.claim(str(tmp_path), (), Faults()).stop()


def test_the_lock_is_released_on_stop(tmp_path: Path) -> None:
    MultiprocessMetrics.claim(str(tmp_path), (), Faults()).stop()

    holder = subprocess.run(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (holder.returncode, holder.stdout) == (0, "claimed\n")


# -- wipe --------------------------------------------------------------------------------


def test_wipe_removes_every_metric_file_except_those_this_process_has_open(
    tmp_path: Path,
) -> None:
    me = os.getpid()
    names = [
        f"counter_{me}.db",  # opened by this process (module-level metric): kept
        f"gauge_livesum_{me}.db",  # this pid, left over from an earlier process: removed
        "counter_4242.db",
        "gauge_all_4243.db",
        "counter_archive.db",
        "histogram_archive.db.tmp",
        "notes.txt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    with (tmp_path / f"counter_{me}.db").open("rb"):
        owned(tmp_path).wipe()

    assert sorted(os.listdir(tmp_path)) == [f"counter_{me}.db", "notes.txt"]


# -- compaction and aggregation ----------------------------------------------------------


@pytest.mark.slow
def test_dead_processes_fold_into_archives_and_totals_match_prometheus_client(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    live = Writer(directory, 7)
    gone: list[int] = []
    # Two rounds, so an archive also absorbs into an existing archive.
    for values in ((5, 2, 9), (1, 4)):
        writers = [Writer(directory, value) for value in values]
        for index, writer in enumerate(writers):
            if index % 2:
                writer.kill()  # SIGKILL: nothing runs at exit
            else:
                writer.exit()
            gone.append(writer.pid)
        expected = plain_view(directory, gone, tmp_path / f"round{len(gone)}")

        collected = samples(owned(directory).collect())

        assert collected == expected
    live_pid = live.pid
    assert sorted(os.listdir(directory)) == sorted(
        [
            *(f"{kind}_archive.db" for kind in ("counter", "histogram", "summary")),
            *(f"gauge_{mode}_archive.db" for mode in ("sum", "max", "min", "mostrecent")),
            *(f"gauge_all_{pid}.db" for pid in gone),  # one series per process, by definition
            *(f"{kind}_{live_pid}.db" for kind in ("counter", "histogram", "summary")),
            *(f"gauge_{mode}_{live_pid}.db" for mode in GAUGE_MODES),
        ]
    )
    level = {
        mode: {
            dict(labels).get("pid"): value
            for (name, labels), value in collected.items()
            if name == f"t_level_{mode}"
        }
        for mode in GAUGE_MODES
    }
    dead_values = dict(zip(map(str, gone), (5, 2, 9, 1, 4), strict=True))
    assert level == {
        "all": {str(live_pid): 7, **dead_values},
        "liveall": {str(live_pid): 7},
        "sum": {None: 28},
        "livesum": {None: 7},
        "max": {None: 9},
        "livemax": {None: 7},
        "min": {None: 1},
        "livemin": {None: 7},
        "mostrecent": {None: 4},  # set last, by a process now dead: the archive keeps time
        "livemostrecent": {None: 7},
    }
    assert collected[("t_orders_total", frozenset({("kind", "a")}))] == 28
    # The compacted directory still reads the same with prometheus_client alone.
    assert samples(MultiProcessCollector(None, path=str(directory)).collect()) == collected
    live.exit()


def test_files_without_values_yet_are_skipped_and_removed_once_their_process_is_gone(
    tmp_path: Path,
) -> None:
    # A process creates its file empty, then sizes it: killed in between, it stays empty.
    (tmp_path / f"counter_{IMPOSSIBLE_PID}.db").write_bytes(b"")
    (tmp_path / f"counter_{os.getppid()}.db").write_bytes(b"")  # alive, still creating it
    write_order(tmp_path, IMPOSSIBLE_PID + 1)

    assert total(owned(tmp_path).collect(), "t_orders_total") == 1
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["counter_archive.db", f"counter_{os.getppid()}.db"]
    )


def write_order(directory: Path, pid: int, kind: str = "a") -> None:
    """A dead process's counter file, appearing whole (as a real one is written in place,
    a half-written file would be counted later, not wrongly)."""
    staging = directory / f"staging-{pid}"
    write_entries(staging, {counter_key("t_orders", kind): (1.0, 0.0)})
    staging.rename(directory / f"counter_{pid}.db")


def test_files_absorbed_but_not_removed_are_never_counted_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for offset in range(3):
        write_order(tmp_path, IMPOSSIBLE_PID + offset)
    stuck = f"counter_{IMPOSSIBLE_PID}.db"
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name == stuck:
            raise PermissionError(13, "Permission denied")
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    directory = owned(tmp_path)

    assert total(directory.collect(), "t_orders_total") == 3
    assert total(directory.collect(), "t_orders_total") == 3
    assert (tmp_path / stuck).exists()

    monkeypatch.setattr(Path, "unlink", real_unlink)
    write_order(tmp_path, IMPOSSIBLE_PID + 3)
    assert total(directory.collect(), "t_orders_total") == 4
    assert sorted(os.listdir(tmp_path)) == ["counter_archive.db"]


@pytest.mark.slow
def test_scrapes_during_compaction_never_count_a_value_twice_or_miss_one(
    tmp_path: Path,
) -> None:
    directory = owned(tmp_path)
    begun = 0  # files being put in place, or in place
    created = 0  # files in place
    done = threading.Event()
    scrapes: list[tuple[int, float, int]] = []
    compactions = 0

    failures: list[OSError] = []

    def scrape_continuously() -> None:
        try:
            while not done.is_set():
                in_place = created
                value = total(directory.collect(), "t_orders_total")
                scrapes.append((in_place, value, begun))
        except OSError as exc:  # a file went away between listing and reading it
            failures.append(exc)

    def compact_continuously() -> None:
        nonlocal compactions
        while not done.is_set():
            directory.compact()
            compactions += 1

    threads = [threading.Thread(target=f) for f in (scrape_continuously, compact_continuously)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    try:
        # However the threads get scheduled: many scrapes and compactions while files come.
        while not failures and (created < 400 or len(scrapes) < 100 or compactions < 100):
            assert time.monotonic() < deadline, (created, len(scrapes), compactions)
            begun += 1
            write_order(tmp_path, IMPOSSIBLE_PID + created, kind="a")
            created += 1
    finally:
        done.set()
        for thread in threads:
            thread.join(60)

    assert failures == []
    # Every scrape saw at least what was in place when it began, at most what was at its end.
    wrong = [(lo, value, hi) for lo, value, hi in scrapes if not lo <= value <= hi]
    assert wrong == []
    assert [value for _, value, _ in scrapes] == sorted(value for _, value, _ in scrapes)
    assert total(directory.collect(), "t_orders_total") == created
    assert sorted(os.listdir(tmp_path)) == ["counter_archive.db"]


def test_the_background_compaction_folds_dead_files_without_a_scrape(tmp_path: Path) -> None:
    metrics = MultiprocessMetrics.claim(str(tmp_path), (), Faults(), compact_interval=0.01)
    metrics.start()
    try:
        write_order(tmp_path, IMPOSSIBLE_PID)
        wait_for(
            lambda: sorted(os.listdir(tmp_path)) == ["celery-prom.lock", "counter_archive.db"],
            what="the dead file to be folded into the archive",
        )
    finally:
        metrics.stop()
    assert total(metrics.collect(), "t_orders_total") == 1


def test_the_main_process_metrics_are_served_beside_the_directory(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    own_counter = Metric("own_things", "Things.", "counter")
    own_counter.add_sample("own_things_total", {}, 3)

    class Own:
        def collect(self) -> Iterator[Metric]:
            yield own_counter

    write_order(tmp_path, IMPOSSIBLE_PID)  # before the worker starts: wiped
    metrics = MultiprocessMetrics.claim(str(tmp_path), (Own(),), Faults())
    registry.register(metrics)
    write_order(tmp_path, IMPOSSIBLE_PID + 1)
    try:
        text = generate_latest(registry).decode()
    finally:
        metrics.stop()

    assert text.splitlines() == [
        "# HELP t_orders_total Orders.",
        "# TYPE t_orders_total counter",
        't_orders_total{kind="a"} 1.0',
        "# HELP own_things_total Things.",
        "# TYPE own_things_total counter",
        "own_things_total 3.0",
    ]
