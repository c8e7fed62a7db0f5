"""The ``celery.commands`` entry point changes nothing else in Celery.

Celery's command line loads every ``celery.commands`` entry point before it reads ``-A``,
so importing ``celery_prom`` must create no app and leave Celery's globals alone; and
Celery's own commands without ``-A`` must behave exactly as where celery-prom is not
installed (``tests/cli/celery_without_prom.py``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tests.support import (
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    REPO,
    Broker,
    stop_process,
    unique,
    wait_for,
)

WITH_PROM = ("-m", "celery")
WITHOUT_PROM = ("-m", "tests.cli.celery_without_prom")
VARIANTS = pytest.mark.parametrize("variant", [WITH_PROM, WITHOUT_PROM], ids=["with", "without"])

REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
#: REDIS_URL as Celery shows it: kombu 5.3.0 shows a URL without a password as it is, later
#: kombu masks its empty password.
SHOWN_URL = rf"redis://(:\*+@)?{re.escape(f'{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}')}"

# Runs in a fresh interpreter: Celery's command line as it is without celery-prom, then
# celery-prom's package, command line and entry point, and Celery's state on either side
# (``celery._state``'s names checked against Celery 5.3.6 and 5.7.0).
IMPORT_SCRIPT = """
import importlib.metadata as metadata
import json, logging, os, sys

from tests.cli.celery_without_prom import entry_points_without_prom

every_entry_point = metadata.entry_points
metadata.entry_points = entry_points_without_prom
import celery.bin.celery
metadata.entry_points = every_entry_point

from celery import _state, signals
from celery.utils.dispatch.signal import Signal

def state():
    root = logging.getLogger()
    return {
        "apps": [repr(app) for app in _state._apps],
        "default_app": repr(_state.default_app),
        "current_app": repr(_state._tls.current_app),
        "receivers": {
            name: len(value.receivers)
            for name, value in vars(signals).items()
            if isinstance(value, Signal)
        },
        "root_logger": [root.level, [repr(handler) for handler in root.handlers]],
        "environ": dict(os.environ),
        "modules": sorted(sys.modules),
    }

before = state()
import celery_prom
import celery_prom.cli.main
(prom,) = metadata.entry_points(group="celery.commands", name="prom")
command = prom.load()
after = state()
print(json.dumps({
    "before": before,
    "after": after,
    "command": command.name,
    "current_app": _state.get_current_app().main,
}))
"""


def test_importing_celery_prom_and_its_entry_point_changes_no_celery_state() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    before, after = report["before"], report["after"]
    imported = sorted(set(after.pop("modules")) - set(before.pop("modules")))

    assert report["command"] == "prom"
    assert after["apps"] == []
    assert after["default_app"] == "None"
    assert after["current_app"] == "None"
    assert after == before
    # prometheus_client decides at import whether it runs in multiprocess mode: imported
    # by the entry point, it would decide before the user's app module set the variable.
    # (What the standard library had imported already depends on the versions installed.)
    assert [
        name
        for name in imported
        if not name.startswith("celery_prom") and name.split(".")[0] not in sys.stdlib_module_names
    ] == []
    assert "celery_prom.demo.app" not in imported
    assert report["current_app"] == "default"


def celery_env(tmp_path: Path) -> dict[str, str]:
    """The environment of both variants: config modules in ``tmp_path``, the launcher."""
    path = [str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def run_celery(
    variant: tuple[str, ...], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *variant, *args],
        cwd=tmp_path,
        env=celery_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_config(tmp_path: Path, **settings: Any) -> str:
    """A Celery config module in ``tmp_path``; returns its name."""
    name = unique("cptest_config").replace("-", "_")
    lines = [f"{key} = {value!r}" for key, value in settings.items()]
    (tmp_path / f"{name}.py").write_text("\n".join(lines) + "\n")
    return name


def test_report_without_app_uses_the_config_module(tmp_path: Path) -> None:
    queue = unique("cptest-report")
    config = write_config(tmp_path, broker_url=REDIS_URL, task_default_queue=queue)

    with_prom, without_prom = (
        run_celery(variant, tmp_path, "--config", config, "report")
        for variant in (WITH_PROM, WITHOUT_PROM)
    )

    assert (with_prom.returncode, with_prom.stdout, with_prom.stderr) == (
        without_prom.returncode,
        without_prom.stdout,
        without_prom.stderr,
    )
    assert with_prom.returncode == 0
    lines = with_prom.stdout.splitlines()
    assert "settings -> transport:redis results:disabled" in lines
    assert re.search(rf"^broker_url: '{SHOWN_URL}'$", with_prom.stdout, flags=re.M)
    assert f"task_default_queue: '{queue}'" in lines


@pytest.fixture
def redis_queue() -> Iterator[str]:
    """A queue of its own on the tests' Redis database (``-b`` takes no key prefix)."""
    queue = unique("cptest-purge")
    yield queue
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB).delete(queue)


@VARIANTS
def test_purge_with_broker_url_empties_the_config_queues_on_that_broker(
    variant: tuple[str, ...], redis_queue: str, tmp_path: Path
) -> None:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    # Celery's Redis transport keeps a queue as a list of that name; pushing to it is what
    # publishing does, without declaring bindings that would outlive the test.
    client.rpush(redis_queue, b"one", b"two", b"three")
    assert client.llen(redis_queue) == 3

    # The config names the queue and no broker: ``-b`` gives the broker.
    config = write_config(tmp_path, task_default_queue=redis_queue)

    result = run_celery(variant, tmp_path, "-b", REDIS_URL, "--config", config, "purge", "-f")

    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "Purged 3 messages from 1 known task queue.\n",
        "",
    )
    assert client.llen(redis_queue) == 0


class Worker:
    """``celery --config <module> worker`` without ``-A``, solo pool, logging to a file."""

    def __init__(self, variant: tuple[str, ...], config: str, tmp_path: Path) -> None:
        self.name = unique("w")
        self.log = tmp_path / f"{self.name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *variant,
                    "--config",
                    config,
                    "worker",
                    "-P",
                    "solo",
                    "-n",
                    f"{self.name}@%h",
                    "--loglevel=INFO",
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                ],
                cwd=tmp_path,
                env=celery_env(tmp_path),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def logged(self, text: str) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.output()}")
        return text in self.output()

    def stop(self) -> int:
        return stop_process(self.process, 30)

    def banner(self) -> str:
        """The start-up banner, without what differs from one run to the next."""
        text = self.output()
        banner = text[text.index(self.hostname) : text.index("[tasks]")]
        banner = banner.replace(self.name, "<name>")
        banner = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", banner)
        return re.sub(r"0x[0-9a-f]+", "<address>", banner)


def run_worker_session(variant: tuple[str, ...], broker: Broker, tmp_path: Path) -> dict[str, Any]:
    """Start a worker on a config's broker and queue, where a task waits; ping it; stop it."""
    queue = unique("cptest-worker")
    config = write_config(
        tmp_path,
        broker_url=broker.url,
        broker_transport_options=broker.transport_options,
        task_default_queue=queue,
    )
    producer = Celery("cptest-producer", set_as_current=False)
    producer.conf.update(
        broker_url=broker.url,
        broker_transport_options=broker.transport_options,
        task_default_queue=queue,
    )
    producer.send_task("cptest.not_registered_here")
    worker = Worker(variant, config, tmp_path)
    try:
        wait_for(lambda: worker.logged(" ready."), what=f"{worker.name} to be ready")
        wait_for(
            lambda: worker.logged(
                "Received unregistered task of type 'cptest.not_registered_here'"
            ),
            what=f"{worker.name} to take the task from {queue}",
        )
        ping = run_celery(variant, tmp_path, "--config", config, "inspect", "ping")
        left = redis.Redis.from_url(broker.url).llen(
            broker.transport_options["global_keyprefix"] + queue
        )
    finally:
        status = worker.stop()
    return {
        "status": status,
        "banner": worker.banner().replace(queue, "<queue>"),
        "ping": (ping.returncode, ping.stdout.replace(worker.name, "<name>"), ping.stderr),
        "left": left,
    }


@pytest.mark.slow
def test_worker_without_app_consumes_from_the_config_broker(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    with_prom, without_prom = (
        run_worker_session(variant, own_redis_broker, tmp_path)
        for variant in (WITH_PROM, WITHOUT_PROM)
    )

    assert with_prom == without_prom
    assert with_prom["status"] == 0
    assert with_prom["left"] == 0
    assert re.search(rf"\.> transport:   {SHOWN_URL}$", with_prom["banner"], flags=re.M)
    assert ".> app:         default:<address> (.default.Loader)" in with_prom["banner"]
    assert ".> <queue>" in with_prom["banner"]
    assert with_prom["ping"] == (
        0,
        f"->  <name>@{socket.gethostname()}: OK\n        pong\n\n1 node online.\n",
        "",
    )
