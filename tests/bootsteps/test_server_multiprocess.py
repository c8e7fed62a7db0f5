"""User metrics from prefork children (``PROMETHEUS_MULTIPROC_DIR``), on real workers.

Workers run ``tests/apps/cptest_multiprocess.py`` against the local Redis; the test app's
tasks update module-level prometheus_client metrics in the pool children.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests.bootsteps.test_server import our_lines
from tests.support import (
    GAUGE_MODES,
    Broker,
    Scrape,
    WorkerProcess,
    promtool_check_metrics,
    running_worker,
    start_worker,
    try_scrape,
    wait_for,
)

M = "cptest_multiprocess."
#: Orders sent by the recycling test: kind -> (tasks, amount of each).
ORDERS = {"book": (150, 5.0), "pen": (100, 0.5), "desk": (50, 50.0)}
#: Linux pids stay below 2**22: a file of this pid is left over from an earlier worker.
STALE_PID = 5_000_000


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "metrics"
    directory.mkdir()
    return directory


def multiprocess_worker(
    broker: Broker, tmp_path: Path, metrics_dir: Path, **kwargs: Any
) -> contextlib.AbstractContextManager[WorkerProcess]:
    return running_worker(
        broker,
        tmp_path,
        app_module="cptest_multiprocess",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        **kwargs,
    )


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (whichever of its threads forked them)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found.update(int(child) for child in (task / "children").read_text().split())
    return found


def only_live_processes_have_files(worker: WorkerProcess, metrics_dir: Path) -> bool:
    """Every metric file is an archive or belongs to the main process or a live child."""
    owners = {path.stem.rpartition("_")[2] for path in metrics_dir.glob("*.db")}
    allowed = {"archive", str(worker.process.pid)} | {str(c) for c in children(worker.process.pid)}
    return owners <= allowed


def family_types(scrape: Scrape) -> list[str]:
    return [line.split()[2] for line in scrape.text.splitlines() if line.startswith("# TYPE ")]


class ScrapeLoop:
    """Scrapes a worker continuously while tasks run and children are recycled."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.scrapes: list[Scrape] = []
        self._worker = worker
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._done.is_set():
            scrape = try_scrape(self._worker.port)
            if scrape is not None:
                self.scrapes.append(scrape)

    @contextlib.contextmanager
    def running(self) -> Iterator[ScrapeLoop]:
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join(60)


def write_stale_orders(metrics_dir: Path) -> None:
    stale = MmapedDict(str(metrics_dir / f"counter_{STALE_PID}.db"))
    key = mmap_key("cptest_orders", "cptest_orders_total", ["kind"], ["book"], "Orders.")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()


@pytest.mark.slow
def test_user_metrics_are_exact_after_hundreds_of_recycled_children(
    redis_broker: Broker,
    tmp_path: Path,
    metrics_dir: Path,
    client_app_for: Callable[..., Any],
) -> None:
    write_stale_orders(metrics_dir)  # from an earlier run: the worker must wipe it
    with multiprocess_worker(
        redis_broker,
        tmp_path,
        metrics_dir,
        concurrency=4,
        extra_args=("--max-tasks-per-child", "1"),
    ) as worker:
        app = client_app_for(redis_broker, worker.queue)
        orders = sum(count for count, _ in ORDERS.values())
        with ScrapeLoop(worker).running() as loop:
            for index in range(max(count for count, _ in ORDERS.values())):
                for kind, (count, amount) in ORDERS.items():
                    if index < count:
                        app.send_task(f"{M}order", args=[kind, amount])
            app.send_task(f"{M}publish_noops", args=[10])
            final = worker.wait_for_scrape(
                lambda s: s.total("celery_task_succeeded_total") == orders + 1 + 10,
                timeout=120,
                what="every task to succeed",
            )
        wait_for(
            lambda: only_live_processes_have_files(worker, metrics_dir),
            what="dead children's files to be compacted",
        )
        after_compaction = worker.scrape()

    for scrape in (final, after_compaction):
        for kind, (count, amount) in ORDERS.items():
            labels = {"kind": kind}
            assert scrape.value("cptest_orders_total", **labels) == count
            assert scrape.value("cptest_order_amount_count", **labels) == count
            assert scrape.value("cptest_order_amount_sum", **labels) == count * amount
            buckets = {
                le: scrape.value("cptest_order_amount_bucket", kind=kind, le=le)
                for le in ("1.0", "10.0", "100.0", "+Inf")
            }
            assert buckets == {
                le: count if amount <= float(le) else 0 for le in ("1.0", "10.0", "100.0", "+Inf")
            }
        # Published from task code in the children, counted once, across children.
        assert scrape.series("celery_task_sent_total") == {
            frozenset({("name", "cptest_tasks.noop"), ("queue_name", worker.queue)}): 10
        }
        # Updated in the main process, by a metric it opened before the directory was wiped.
        assert scrape.value("cptest_received_total") == orders + 1 + 10
        types = family_types(scrape)
        assert len(types) == len(set(types))
        assert "celery_task_sent_total" in types
        assert "process_resident_memory_bytes" in types

    # No scrape while children came and went saw a value twice or missed one.
    seen = [
        (s.value("celery_task_succeeded_total", **order_labels(worker)) or 0, orders_total(s))
        for s in loop.scrapes
    ]
    assert len(seen) > 10
    assert [total for _, total in seen] == sorted(total for _, total in seen)
    assert [(done, total) for done, total in seen if not done <= total <= orders] == []

    assert promtool_check_metrics(final.text) == []


def order_labels(worker: WorkerProcess) -> dict[str, str]:
    return {"name": f"{M}order", "hostname": worker.hostname, "queue_name": worker.queue}


def orders_total(scrape: Scrape) -> float:
    return scrape.total("cptest_orders_total")


@pytest.mark.slow
def test_increments_made_before_a_sigkill_are_counted(
    redis_broker: Broker,
    tmp_path: Path,
    metrics_dir: Path,
    client_app_for: Callable[..., Any],
) -> None:
    with multiprocess_worker(redis_broker, tmp_path, metrics_dir, concurrency=2) as worker:
        app = client_app_for(redis_broker, worker.queue)
        for _ in range(3):
            app.send_task(f"{M}order_and_die", args=["lost", 1.0])
        for _ in range(5):
            app.send_task(f"{M}order", args=["kept", 1.0])
        scrape = worker.wait_for_scrape(
            lambda s: (
                s.total("celery_task_failed_total", exception="WorkerLostError") == 3
                and s.total("celery_task_succeeded_total") == 5
            ),
            what="3 lost and 5 successful tasks",
        )
        wait_for(
            lambda: only_live_processes_have_files(worker, metrics_dir),
            what="the killed children's files to be compacted",
        )
        after_compaction = worker.scrape()

    for current in (scrape, after_compaction):
        assert current.value("cptest_orders_total", kind="lost") == 3
        assert current.value("cptest_orders_total", kind="kept") == 5
        assert current.value("cptest_order_amount_sum", kind="lost") == 3


class Levels:
    """Sets the level gauges from tasks that keep their pool process until released."""

    def __init__(self, app: Any, worker: WorkerProcess, tmp_path: Path) -> None:
        self._app = app
        self._worker = worker
        self._tmp_path = tmp_path
        self._releases: dict[float, Path] = {}

    def hold(self, value: float) -> None:
        release = self._releases[value] = self._tmp_path / f"release-{value}"
        self._app.send_task(f"{M}set_levels", args=[value, str(release)])
        self._worker.wait_for_scrape(
            lambda s: value in live_values(s), what=f"a live child holding {value}"
        )

    def release(self, value: float) -> Scrape:
        self._releases[value].touch()
        return self._worker.wait_for_scrape(
            lambda s: value not in live_values(s), what=f"the child holding {value} to exit"
        )


def live_values(scrape: Scrape) -> list[float]:
    return sorted(scrape.series("cptest_level_liveall").values())


def levels(scrape: Scrape) -> dict[str, list[float]]:
    """Each mode's values: one per process for ``all``/``liveall``, else at most one."""
    return {mode: sorted(scrape.series(f"cptest_level_{mode}").values()) for mode in GAUGE_MODES}


@pytest.mark.slow
def test_gauges_follow_their_multiprocess_mode_as_children_come_and_go(
    redis_broker: Broker,
    tmp_path: Path,
    metrics_dir: Path,
    client_app_for: Callable[..., Any],
) -> None:
    with multiprocess_worker(
        redis_broker,
        tmp_path,
        metrics_dir,
        concurrency=2,
        extra_args=("--max-tasks-per-child", "1"),
    ) as worker:
        gauges = Levels(client_app_for(redis_broker, worker.queue), worker, tmp_path)
        gauges.hold(5)
        gauges.hold(2)
        both_live = levels(worker.scrape())
        gauges.release(5)
        gauges.release(2)
        both_dead = levels(worker.scrape())
        gauges.hold(9)
        gauges.hold(1)  # set after 9: the most recent value, even once its process is gone
        one_dead = levels(gauges.release(1))
        all_series = worker.scrape().series("cptest_level_all")
        gauges.release(9)

    assert both_live == {
        "all": [2, 5],
        "liveall": [2, 5],
        "sum": [7],
        "livesum": [7],
        "max": [5],
        "livemax": [5],
        "min": [2],
        "livemin": [2],
        "mostrecent": [2],
        "livemostrecent": [2],
    }
    assert both_dead == {
        "all": [2, 5],
        "liveall": [],
        "sum": [7],
        "livesum": [],
        "max": [5],
        "livemax": [],
        "min": [2],
        "livemin": [],
        "mostrecent": [2],
        "livemostrecent": [],
    }
    assert one_dead == {
        "all": [1, 2, 5, 9],
        "liveall": [9],
        "sum": [17],
        "livesum": [9],
        "max": [9],
        "livemax": [9],
        "min": [1],
        "livemin": [9],
        "mostrecent": [1],
        "livemostrecent": [9],
    }
    assert len({dict(labels)["pid"] for labels in all_series}) == 4


def failed_start(broker: Broker, tmp_path: Path, app_module: str, env: dict[str, str]) -> str:
    """The worker's output, once it has exited with status 2."""
    worker = start_worker(broker, tmp_path, app_module=app_module, env=env, wait=False)
    assert worker.process.wait(60) == 2, worker.output()
    return "\n".join(our_lines(worker.output()))


@pytest.mark.parametrize(
    ("app_module", "variable", "directory", "message"),
    [
        (
            "cptest_multiprocess",
            "CPTEST_LATE_MULTIPROC_DIR",
            "{metrics_dir}",
            "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported; set it in "
            "the worker's environment before Python starts",
        ),
        (
            "cptest_tasks",
            "PROMETHEUS_MULTIPROC_DIR",
            "{metrics_dir}/missing",
            "PROMETHEUS_MULTIPROC_DIR={metrics_dir}/missing is not a directory",
        ),
        (
            "cptest_tasks",
            "PROMETHEUS_MULTIPROC_DIR",
            "/sys",
            "PROMETHEUS_MULTIPROC_DIR=/sys is not writable (Permission denied)",
        ),
    ],
    ids=["set-too-late", "missing", "not-writable"],
)
def test_a_setup_that_cannot_work_stops_the_worker_with_one_line(
    redis_broker: Broker,
    tmp_path: Path,
    metrics_dir: Path,
    *,
    app_module: str,
    variable: str,
    directory: str,
    message: str,
) -> None:
    env = {variable: directory.format(metrics_dir=metrics_dir)}

    output = failed_start(redis_broker, tmp_path, app_module, env)

    assert output == f"Error: celery-prom: {message.format(metrics_dir=metrics_dir)}"


@pytest.mark.slow
def test_a_directory_is_for_one_worker_only(
    redis_broker: Broker, tmp_path: Path, metrics_dir: Path, client_app_for: Callable[..., Any]
) -> None:
    with multiprocess_worker(redis_broker, tmp_path, metrics_dir, concurrency=1) as first:
        output = failed_start(
            redis_broker, tmp_path, "cptest_tasks", {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        )
        client_app_for(redis_broker, first.queue).send_task(f"{M}order", args=["after", 1.0])
        scrape = first.wait_for_scrape(
            lambda s: s.value("cptest_orders_total", kind="after") == 1,
            what="the first worker to keep counting",
        )

    assert output == (
        f"Error: celery-prom: PROMETHEUS_MULTIPROC_DIR={metrics_dir} is in use by another "
        f"worker (pid {first.process.pid}); give each worker a directory of its own"
    )
    assert scrape.value("cptest_orders_total", kind="after") == 1
