"""The live demo, run as a newcomer would: one command, real processes, a clean exit."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_prom.demo.names import DEFAULT_QUEUE, REPORTS_QUEUE
from tests.support import (
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    REPO,
    Scrape,
    free_port,
    try_scrape,
    wait_for,
)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def demo_is_lively(worker: Scrape, exporter: Scrape) -> bool:
    return (
        worker.total("celery_task_succeeded_total") > 0
        and worker.total("celery_task_failed_total") > 0
        and worker.total("celery_task_retried_total") > 0
        and worker.total("celery_task_queue_wait_seconds_count") > 0
        and worker.total("celery_beat_tasks_sent_total") > 0
        and exporter.total("celery_worker_up") == 1
        and {dict(labels)["queue_name"] for labels in exporter.series("celery_queue_length")}
        == {"celery-prom-demo", "celery-prom-demo-reports"}
    )


@pytest.mark.slow
def test_the_demo_shows_live_metrics_and_cleans_up_after_ctrl_c(tmp_path: Path) -> None:
    worker_port, exporter_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    # Ctrl-C as at a terminal, also where the tests run in the background, which starts them
    # with SIGINT ignored: a handler here lets the demo start with SIGINT at its default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with log.open("wb") as out:
            demo = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery_prom.cli",
                    "demo",
                    "--worker-port",
                    str(worker_port),
                    "--exporter-port",
                    str(exporter_port),
                ],
                cwd=tmp_path,
                env=dict(os.environ, PYTHONPATH=str(REPO)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:

        def lively() -> bool:
            assert demo.poll() is None, log.read_text()
            worker, exporter = try_scrape(worker_port), try_scrape(exporter_port)
            return bool(worker and exporter and demo_is_lively(worker, exporter))

        wait_for(lively, timeout=120, interval=0.5, what="the demo's metrics")
        wait_for(lambda: "succeeded" in log.read_text(), what="a live summary line")
        folder = re.search(r"embedded broker in (\S+)", log.read_text())
        assert folder is not None
        assert Path(folder.group(1)).is_dir()

        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)

    output = log.read_text()
    assert output.splitlines()[-1] == (
        "celery-prom demo: stopped; its processes and temporary files are gone"
    )
    assert f"http://127.0.0.1:{worker_port}/metrics" in output
    assert not Path(folder.group(1)).exists()
    assert processes_mentioning(f"--prom-port {worker_port}") == []
    assert processes_mentioning(f"--port {exporter_port}") == []


def test_on_a_real_broker_the_demo_leaves_no_messages_behind_even_when_it_fails() -> None:
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    # Leftovers of an earlier run, an urgent order among them (a priority sub-queue).
    producer = Celery("cptest_demo_leftovers", broker=url, set_as_current=False)
    producer.send_task("demo.checkout", args=[1], queue=DEFAULT_QUEUE, priority=9)
    producer.send_task("demo.build_report", queue=REPORTS_QUEUE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "celery_prom.cli",
                "demo",
                "--broker-url",
                url,
                "--host",
                "127.0.0.1",
                "--worker-port",
                str(taken.getsockname()[1]),
                "--exporter-port",
                str(free_port()),
            ],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "already in use" in done.stdout
    assert re.search(r"^celery-prom demo: removed \d+ unprocessed messages from", done.stdout, re.M)
    assert client.keys("celery-prom-demo*") == []
