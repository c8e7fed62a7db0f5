"""A real Prometheus server for the end-to-end tests: temporary config and data, free port."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import ServingProcess, free_port, http_get, wait_for

#: Fast enough for a test to see scrapes and rule evaluations within seconds.
INTERVAL = "1s"


class PrometheusServer(ServingProcess):
    @property
    def title(self) -> str:
        return "prometheus"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at the current time; the result vector."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def active_targets(self, job: str) -> list[dict[str, Any]]:
        """The targets Prometheus scrapes for ``job``, as its targets API describes them."""
        url = f"http://127.0.0.1:{self.port}/api/v1/targets?state=active"
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        return [
            target for target in body["data"]["activeTargets"] if target["labels"].get("job") == job
        ]

    def exemplar_labels(self, expr: str) -> list[dict[str, str]]:
        """The labels of every exemplar stored for the series of ``expr``, over all time."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query_exemplars?" + urllib.parse.urlencode(
            {"query": expr, "start": 0, "end": 2**32}
        )
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        return [exemplar["labels"] for series in body["data"] for exemplar in series["exemplars"]]

    def has_finite_sample(self, expr: str) -> bool:
        return any(math.isfinite(float(sample["value"][1])) for sample in self.query(expr))


def config(targets: dict[str, list[str]], rule_files: list[Path]) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": INTERVAL,
            "scrape_timeout": INTERVAL,
            "evaluation_interval": INTERVAL,
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": addresses}]}
            for job, addresses in targets.items()
        ],
    }


@contextlib.contextmanager
def running_prometheus(
    tmp_path: Path, targets: dict[str, list[str]], rule_files: list[Path], *flags: str
) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``targets`` (job name -> host:port list) with ``rule_files``."""
    configuration = config(targets, rule_files)
    with prometheus_process(tmp_path / "prometheus", configuration, *flags) as server:
        yield server


@contextlib.contextmanager
def prometheus_process(
    directory: Path, configuration: dict[str, Any], *flags: str, env: dict[str, str] | None = None
) -> Iterator[PrometheusServer]:
    """Prometheus with ``configuration`` written to ``directory``/prometheus.yml (so relative
    paths in it are relative to ``directory``), its data there too, on a free port."""
    directory.mkdir(exist_ok=True)
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(configuration), encoding="utf-8")
    port = free_port()
    log = directory / "prometheus.log"
    args = [
        "prometheus",
        f"--config.file={config_file}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *flags,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = PrometheusServer(port, process, log)
    try:
        wait_for(lambda: _ready(server), what="Prometheus to be ready")
        yield server
    finally:
        server.stop()


def _ready(server: PrometheusServer) -> bool:
    server.assert_alive()
    try:
        http_get(f"http://127.0.0.1:{server.port}/-/ready")
    except OSError:
        return False
    return True
