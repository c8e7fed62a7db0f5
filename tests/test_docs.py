"""The documentation builds without a broken link and stays true to the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import REPO
from tools.metric_reference import PAGE, current_block, render


def test_the_site_builds_with_every_link_and_anchor_resolved(tmp_path: Path) -> None:
    # mkdocs.yml is strict and turns broken links, anchors and nav entries into warnings.
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "metrics" / "index.html").is_file()


def test_the_metric_reference_matches_the_catalogue() -> None:
    assert current_block(PAGE.read_text()) == render(), (
        "docs/metrics.md's metric reference is stale: run python -m tools.metric_reference --write"
    )


def test_every_benchmark_shows_the_command_that_produced_its_results() -> None:
    page = (REPO / "docs" / "benchmarks.md").read_text()
    shown = set(re.findall(r"^\.venv/bin/python benchmarks/(\w+\.py)", page, flags=re.M))
    scripts = {path.name for path in (REPO / "benchmarks").glob("*.py")}

    assert shown == scripts
