"""The README stays true to the code and to the documentation it leads to."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import markdown
import pytest

from tests.monitoring.promql import promtool_check_config
from tests.support import REPO, RedisServer, try_scrape, wait_for

README = REPO / "README.md"
#: The README keeps what a new user reads first; everything else lives in docs/.
MAX_README_BYTES = 15 * 1024


def test_the_readme_stays_short() -> None:
    assert len(README.read_bytes()) < MAX_README_BYTES


def relative_links(text: str) -> list[str]:
    """The targets of the Markdown links in text that stay inside the repository."""
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", outside_code)
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


def anchors(markdown_file: Path) -> set[str]:
    """The ids Python-Markdown's toc extension gives the headings, as MkDocs does."""
    html = markdown.markdown(markdown_file.read_text(), extensions=["toc"])
    return set(re.findall(r'<h[1-6] id="([^"]+)"', html))


def test_every_relative_link_in_the_readme_leads_somewhere() -> None:
    links = relative_links(README.read_text())
    assert links
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO / path if path else README
        assert target.is_file(), link
        assert not anchor or anchor in anchors(target), link


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The (language, text) of each fenced code block in text."""
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def quick_start_blocks() -> list[tuple[str, str]]:
    """The code blocks of the README's Quick start section."""
    section = README.read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return code_blocks(section)


def test_the_documentation_quick_start_shows_the_readme_code() -> None:
    page = (REPO / "docs" / "quickstart.md").read_text()

    assert code_blocks(page) == quick_start_blocks()


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
    check = promtool_check_config(tmp_path)
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
