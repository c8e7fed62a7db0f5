"""``celery-prom monitoring export``: what it prints, and bad input as one line with status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def export(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_prom.cli", "monitoring", "export", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_export_says_how_many_files_it_wrote_where(tmp_path: Path) -> None:
    result = export("out", cwd=tmp_path)

    assert (result.returncode, result.stderr) == (0, "")
    written = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert result.stdout == f"Wrote {len(written)} files to out\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--worker-job", "my workers", "out"],
            "Invalid value for '--worker-job': 'my workers' is not a job name "
            "(letters, digits, '_' and '-').",
        ),
        (
            ["--exporter-job", "", "out"],
            "Invalid value for '--exporter-job': '' is not a job name "
            "(letters, digits, '_' and '-').",
        ),
        (
            ["--exporter-address", "exporter", "out"],
            "Invalid value for '--exporter-address': 'exporter' is not host:port.",
        ),
        (
            ["--exporter-address", "exporter:99999", "out"],
            "Invalid value for '--exporter-address': 99999 is not in the range 1<=x<=65535.",
        ),
        (["full"], "full is not empty: give an empty or new directory, or --force"),
        (
            ["full/notes.txt"],
            "Invalid value for 'DIRECTORY': Directory 'full/notes.txt' is a file.",
        ),
        ([], "Missing argument 'DIRECTORY'."),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")

    result = export(*args, cwd=tmp_path)

    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"Error: {message}\n")
    assert not (tmp_path / "out").exists()
    assert [path.name for path in (tmp_path / "full").iterdir()] == ["notes.txt"]


def test_force_writes_into_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")

    result = export("--force", "full", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "full" / "prometheus.yml").is_file()


def test_a_directory_it_cannot_make_is_one_line_and_status_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    result = export("notes.txt/out", cwd=tmp_path)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "Error: Not a directory: notes.txt/out\n"
