"""The README stays true to the code."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, RedisServer, try_scrape, wait_for

README = REPO / "README.md"


def quick_start_blocks() -> list[tuple[str, str]]:
    """The (language, text) code blocks of the README's Quick start section."""
    section = README.read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def commands(shell_block: str) -> list[list[str]]:
    """Each line of a shell block, without its trailing comment, as an argument list."""
    return [shlex.split(line, comments=True) for line in shell_block.splitlines() if line]


@pytest.mark.slow
def test_the_quick_start_works_as_written(tmp_path: Path) -> None:
    (python_lang, app_code), (shell_lang, shell), (yaml_lang, scrape_config) = quick_start_blocks()[
        :3
    ]
    assert (python_lang, shell_lang, yaml_lang) == ("python", "sh", "yaml")
    app_file = tmp_path / app_code.splitlines()[0].removeprefix("# ")
    app_file.parent.mkdir()
    app_file.write_text(app_code)
    (tmp_path / "prometheus.yml").write_text(scrape_config)
    check = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # The README's broker is Redis on localhost:6379; Celery lets CELERY_BROKER_URL override
    # it, which points the commands at a private Redis instead of the shared one.
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    env = dict(
        os.environ,
        CELERY_BROKER_URL=redis_server.broker.url,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    processes = []
    try:
        for number, args in enumerate(commands(shell)):
            with (tmp_path / f"command-{number}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        worker = wait_for(lambda: try_scrape(9808), timeout=60, what="the worker's metrics")
        hostname = next(dict(labels)["hostname"] for labels in worker.series("celery_worker_info"))
        wait_for(
            lambda: (s := try_scrape(9809)) and s.value("celery_worker_up", hostname=hostname) == 1,
            timeout=60,
            what="the exporter to see the worker",
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        redis_server.stop()
