"""Helpers the benchmarks share: a private redis-server, free ports, scraping."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


class RedisServer:
    """A redis-server on a fixed free port with stock settings (pub/sub buffer limits
    included), that can be killed and started again on the same port."""

    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._workdir,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: _connects(self.port), 20, "redis-server")

    def kill(self) -> None:
        """SIGKILL: as abrupt as a crash."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A started ``RedisServer``, killed on exit."""
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir)
        try:
            server.start()
            yield server
        finally:
            server.kill()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def fetch(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def metric_sum(port: int, name: str) -> float | None:
    """Sum of every sample called ``name`` on a /metrics page, None if unreachable.

    A regular expression rather than a full parse: pages here run to 100 MB.
    """
    try:
        text = fetch(f"http://127.0.0.1:{port}/metrics", timeout=60).decode()
    except OSError:
        return None
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}\n]*}})? (\S+)$", re.MULTILINE)
    return sum(float(match.group(1)) for match in pattern.finditer(text))


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
