"""Fleets with discovery, end to end: workers found from their heartbeats.

A real Prometheus reads the exporter's /sd/workers with the http_sd_configs prometheus.yml
offers, and scrapes workers nobody told it about; workers sharing one port range on one
host each take a port of their own and are all found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.exporter_process import running_exporter_for
from tests.monitoring.prometheus import INTERVAL, config, prometheus_process
from tests.monitoring.test_prometheus_config import http_sd_alternative
from tests.support import (
    Broker,
    WorkerProcess,
    free_port_range,
    running_worker,
    start_worker,
    stop_process,
    wait_for,
)


def http_sd_config(exporter_port: int) -> dict[str, Any]:
    """A Prometheus config whose only job is the worker job with prometheus.yml's
    http_sd_configs, asking the test's exporter every second."""
    (http_sd,) = http_sd_alternative()
    http_sd["url"] = http_sd["url"].replace("celery-exporter:9808", f"127.0.0.1:{exporter_port}")
    http_sd["refresh_interval"] = INTERVAL
    configuration = config({}, [])
    configuration["scrape_configs"] = [{"job_name": "celery-worker", "http_sd_configs": [http_sd]}]
    return configuration


def address(worker: WorkerProcess) -> str:
    return f"127.0.0.1:{worker.port}"


def group(worker: WorkerProcess) -> dict[str, Any]:
    """The target group /sd/workers lists for a worker of the tests."""
    return {
        "targets": [address(worker)],
        "labels": {
            "__meta_celery_hostname": worker.hostname,
            "__meta_celery_queues": f",{worker.queue},",
        },
    }


@pytest.mark.slow
def test_prometheus_scrapes_the_workers_the_exporter_hears_and_drops_one_that_stops(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    broker = own_redis_broker
    with (
        running_exporter_for(broker, tmp_path) as exporter,
        running_worker(broker, tmp_path) as staying,
        running_worker(broker, tmp_path, pool="solo") as leaving,
        prometheus_process(tmp_path / "prometheus", http_sd_config(exporter.port)) as prometheus,
    ):

        def scraped() -> dict[str, str]:
            """Address -> health of the worker job's targets."""
            return {
                target["labels"]["instance"]: target["health"]
                for target in prometheus.active_targets("celery-worker")
            }

        def celery_labels() -> dict[str, dict[str, str]]:
            """Address -> the __meta_celery_ labels Prometheus discovered for it."""
            return {
                target["labels"]["instance"]: {
                    name: value
                    for name, value in target["discoveredLabels"].items()
                    if name.startswith("__meta_celery_")
                }
                for target in prometheus.active_targets("celery-worker")
            }

        wait_for(
            lambda: scraped() == {address(staying): "up", address(leaving): "up"},
            what="Prometheus to scrape both workers",
        )
        # A worker's queues reach /sd/workers once the exporter has asked for them, which
        # may be a discovery refresh after the worker itself was listed.
        wait_for(
            lambda: (
                celery_labels()
                == {address(worker): group(worker)["labels"] for worker in (staying, leaving)}
            ),
            what="Prometheus to discover each worker's hostname and queues",
        )
        # The workers' own hostname labels are kept as they are (no exported_hostname).
        info = prometheus.query('celery_worker_info{job="celery-worker"}')
        assert sorted((s["metric"]["instance"], s["metric"]["hostname"]) for s in info) == sorted(
            (address(worker), worker.hostname) for worker in (staying, leaving)
        )
        assert prometheus.query("count by (exported_hostname) ({exported_hostname!=''})") == []

        assert leaving.stop() == 0

        wait_for(
            lambda: scraped() == {address(staying): "up"},
            what="Prometheus to drop the stopped worker",
        )
        assert exporter.workers() == [group(staying)]


@pytest.mark.slow
def test_four_workers_with_one_port_range_each_take_a_port_and_are_all_found(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    ports = free_port_range(6)
    workers = [
        start_worker(own_redis_broker, tmp_path, pool="solo", port=ports, wait=False)
        for _ in range(4)
    ]
    try:
        with running_exporter_for(own_redis_broker, tmp_path) as exporter:
            for worker in workers:
                worker.wait_until_ready()
            taken = [worker.port for worker in workers]
            assert len(set(taken)) == 4, taken
            assert set(taken) <= set(ports), (taken, ports)
            for worker in workers:
                # Each answers on the port it logged, as itself.
                info = worker.scrape().by_label("celery_worker_info", "hostname")
                assert list(info) == [worker.hostname]

            expected = sorted(
                (group(worker) for worker in workers),
                key=lambda item: item["labels"]["__meta_celery_hostname"],
            )
            exporter.wait_for_workers(
                lambda groups: groups == expected, what="the four workers on /sd/workers"
            )
    finally:
        for worker in workers:
            stop_process(worker.process)
