"""``celery-prom demo``'s options: one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--worker-port", "abc"],
            "Invalid value for '--worker-port': 'abc' is not a valid integer range.",
        ),
        (
            ["--exporter-port", "70000"],
            "Invalid value for '--exporter-port': 70000 is not in the range 1<=x<=65535.",
        ),
        (
            ["--worker-port", "0"],
            "Invalid value for '--worker-port': 0 is not in the range 1<=x<=65535.",
        ),
        (
            ["--duration", "-1"],
            "Invalid value for '--duration': -1.0 is not in the range x>0.",
        ),
        (
            ["--host", "no host"],
            "Invalid value for '--host': 'no host' is not a host name or IP address.",
        ),
        (
            ["--broker-url", "foo://u:Sentinel-pw@h/0"],
            "Invalid value for '--broker-url': unknown broker transport 'foo' in foo://u:**@h/0.",
        ),
        (["--colour"], "No such option '--colour'."),
    ],
)
def test_bad_demo_options_are_one_line_and_status_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery_prom.cli", "demo", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"Error: {message}\n")
