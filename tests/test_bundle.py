"""The monitoring bundle in the package: the repository's monitoring/ less its tests, written
out byte for byte, or with a deployment's job names and exporter address in exactly the
places that name them; and the same from a wheel installed in a fresh virtualenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path, PurePosixPath

import pytest

from celery_prom.bundle import (
    Names,
    NotEmptyError,
    bundle_files,
    export,
    rename,
)
from tests.monitoring.promql import MONITORING, promtool_check_config
from tests.support import REPO

RENAMED = Names(
    worker_job="workers", exporter_job="broker-watch", exporter_address="exporter.internal:9100"
)
#: Every line the renaming above changes: (file, line as shipped, line as exported).
RENAMED_LINES = [
    (
        "dashboards/celery-overview.json",
        '          "expr": "sum(up{job=\\"celery-worker\\"})",',
        '          "expr": "sum(up{job=\\"workers\\"})",',
    ),
    (
        "dashboards/celery-overview.json",
        '          "expr": "up{job=\\"celery-worker\\"}",',
        '          "expr": "up{job=\\"workers\\"}",',
    ),
    (
        "kubernetes/exporter-servicemonitor.yaml",
        "          replacement: celery-exporter",
        "          replacement: broker-watch",
    ),
    (
        "kubernetes/prometheusrule.yaml",
        '      expr: up{job="celery-worker"} == 0',
        '      expr: up{job="workers"} == 0',
    ),
    (
        "kubernetes/prometheusrule.yaml",
        '      expr: up{job=~"celery-.*", job!="celery-worker", job!="celery-beat"} == 0',
        '      expr: up{job=~"celery-.*|broker-watch", job!="workers", job!="celery-beat"} == 0',
    ),
    (
        "kubernetes/worker-podmonitor.yaml",
        "          replacement: celery-worker",
        "          replacement: workers",
    ),
    ("prometheus-ha.yml", "  - job_name: celery-worker", "  - job_name: workers"),
    ("prometheus-ha.yml", "  - job_name: celery-exporter", "  - job_name: broker-watch"),
    (
        "prometheus-ha.yml",
        "          - celery-exporter:9808",
        "          - exporter.internal:9100",
    ),
    ("prometheus.yml", "  - job_name: celery-worker", "  - job_name: workers"),
    (
        "prometheus.yml",
        "    #   - url: http://celery-exporter:9808/sd/workers",
        "    #   - url: http://exporter.internal:9100/sd/workers",
    ),
    ("prometheus.yml", "  - job_name: celery-exporter", "  - job_name: broker-watch"),
    ("prometheus.yml", "          - celery-exporter:9808", "          - exporter.internal:9100"),
    (
        "rules/celery-alerts.yml",
        '        expr: up{job="celery-worker"} == 0',
        '        expr: up{job="workers"} == 0',
    ),
    (
        "rules/celery-alerts.yml",
        '        expr: up{job=~"celery-.*", job!="celery-worker", job!="celery-beat"} == 0',
        '        expr: up{job=~"celery-.*|broker-watch", job!="workers", job!="celery-beat"} == 0',
    ),
]


def repository_bundle() -> dict[str, bytes]:
    """monitoring/ as the repository holds it, less the rules' promtool tests."""
    return {
        path.relative_to(MONITORING).as_posix(): path.read_bytes()
        for path in sorted(MONITORING.rglob("*"))
        if path.is_file() and path.relative_to(MONITORING).parts[0] != "tests"
    }


def read_tree(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def changed_lines(before: dict[str, bytes], after: dict[str, bytes]) -> list[tuple[str, str, str]]:
    """(file, old line, new line) for each line that differs; renaming adds no line."""
    assert sorted(before) == sorted(after)
    return [
        (name, old, new)
        for name in sorted(before)
        for old, new in zip(
            before[name].decode().splitlines(), after[name].decode().splitlines(), strict=True
        )
        if old != new
    ]


def test_the_bundle_is_monitoring_without_its_tests() -> None:
    shipped = {path.as_posix(): source.read_bytes() for path, source in bundle_files()}

    assert shipped == repository_bundle()
    assert [path.as_posix() for path, _ in bundle_files()] == sorted(shipped)


def test_export_writes_the_bundle_byte_for_byte(tmp_path: Path) -> None:
    written = export(tmp_path / "new" / "monitoring", Names())

    assert read_tree(tmp_path / "new" / "monitoring") == repository_bundle()
    assert written == [PurePosixPath(name) for name in sorted(repository_bundle())]


def test_export_with_names_changes_exactly_the_lines_that_name_them(tmp_path: Path) -> None:
    export(tmp_path, RENAMED)

    assert changed_lines(repository_bundle(), read_tree(tmp_path)) == RENAMED_LINES
    check = promtool_check_config(tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_bracketed_ipv6_exporter_address_stays_a_yaml_string_and_a_url_host() -> None:
    renamed = rename(
        "    - targets:\n        - celery-exporter:9808\n", Names(exporter_address="[::1]:9808")
    )

    assert renamed == '    - targets:\n        - "[::1]:9808"\n'
    assert (
        rename(
            "  - url: http://celery-exporter:9808/sd/workers", Names(exporter_address="[::1]:9808")
        )
        == "  - url: http://[::1]:9808/sd/workers"
    )


def test_an_exporter_job_named_celery_something_keeps_the_scrape_target_alert() -> None:
    alert = 'up{job=~"celery-.*", job!="celery-worker"} == 0'

    assert rename(alert, Names(exporter_job="celery-broker")) == alert


def test_a_non_empty_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(NotEmptyError, match="is not empty"):
        export(tmp_path, Names())

    assert read_tree(tmp_path) == {"notes.txt": b"mine"}


def test_force_overwrites_the_bundle_files_and_keeps_the_others(tmp_path: Path) -> None:
    export(tmp_path, RENAMED)
    (tmp_path / "rules" / "celery-thresholds.yml").write_text("groups: []\n")

    export(tmp_path, Names(), force=True)

    assert read_tree(tmp_path) == {
        **repository_bundle(),
        "rules/celery-thresholds.yml": b"groups: []\n",
    }


# -- from the wheel ------------------------------------------------------------------------


def build_wheel(tmp_path: Path) -> Path:
    """The wheel pip builds from a copy of the source (the checkout stays free of build/)."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("celery_prom-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed; its dependencies come from this one's."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ]
    )
    site_packages = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).strip()
    # A path line, not a site directory: this venv's editable celery_prom stays out of sight.
    (Path(site_packages) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def run(args: list[str], cwd: Path | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_ships_the_bundle_and_exports_it(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path, build_wheel(tmp_path))
    location = run(
        [str(venv / "bin" / "python"), "-c", "import celery_prom; print(celery_prom.__file__)"],
        cwd=tmp_path,
    )
    assert Path(location.strip()).is_relative_to(venv)
    command = str(venv / "bin" / "celery-prom")

    output = run([command, "monitoring", "export", "bundle"], cwd=tmp_path)
    run(
        [
            command,
            "monitoring",
            "export",
            "renamed",
            "--worker-job",
            RENAMED.worker_job,
            "--exporter-job",
            RENAMED.exporter_job,
            "--exporter-address",
            RENAMED.exporter_address,
        ],
        cwd=tmp_path,
    )

    assert output == f"Wrote {len(repository_bundle())} files to bundle\n"
    assert read_tree(tmp_path / "bundle") == repository_bundle()
    assert changed_lines(repository_bundle(), read_tree(tmp_path / "renamed")) == RENAMED_LINES
    check = promtool_check_config(tmp_path / "bundle")
    assert check.returncode == 0, check.stdout + check.stderr
    for rule_file in ("rules/celery-recording.yml", "rules/celery-alerts.yml"):
        assert f"Checking {rule_file}" in check.stdout
