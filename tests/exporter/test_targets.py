"""/sd/workers: the target groups of the workers that advertise their metrics address."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from celery_prom.exporter.queues import QueueDiscovery, QueueNames
from celery_prom.exporter.targets import WorkerTargets
from tests.exporter.test_liveness import Harness, advertising
from tests.exporter.test_queues import RepliesApp
from tests.exporter_process import running_exporter_for
from tests.support import Broker, running_worker


def test_one_group_per_advertising_worker_with_its_hostname_and_sorted_queues() -> None:
    h = Harness()
    discovery = QueueDiscovery(
        RepliesApp({"w1@h": [{"name": "reports"}, {"name": "celery"}], "w3@h": []}),
        QueueNames([], 10),
    )
    discovery.refresh()
    h.liveness.observe(advertising("w1@h", 1.0, "10.0.0.1:9808"))
    h.liveness.observe(advertising("w2@h", 1.0, "10.0.0.2:9808"))
    h.liveness.observe(advertising("w3@h", 1.0, "10.0.0.3:9808"))

    body, content_type = WorkerTargets(h.liveness, discovery).render()

    assert content_type == "application/json"
    assert json.loads(body) == [
        {
            "targets": ["10.0.0.1:9808"],
            "labels": {
                "__meta_celery_hostname": "w1@h",
                "__meta_celery_queues": ",celery,reports,",
            },
        },
        {
            "targets": ["10.0.0.2:9808"],
            "labels": {"__meta_celery_hostname": "w2@h", "__meta_celery_queues": ",,"},
        },
        {
            "targets": ["10.0.0.3:9808"],
            "labels": {"__meta_celery_hostname": "w3@h", "__meta_celery_queues": ",,"},
        },
    ]


def test_no_workers_is_an_empty_list() -> None:
    discovery = QueueDiscovery(RepliesApp({}), QueueNames([], 10))
    assert WorkerTargets(Harness().liveness, discovery).render()[0] == b"[]"


@pytest.mark.slow
def test_the_exporter_lists_a_worker_at_the_address_it_advertises(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    with (
        running_worker(
            own_redis_broker, tmp_path, pool="solo", env={"CELERY_PROM_ADVERTISE": "localhost"}
        ) as worker,
        running_exporter_for(own_redis_broker, tmp_path) as exporter,
    ):
        expected = [
            {
                "targets": [f"localhost:{worker.port}"],
                "labels": {
                    "__meta_celery_hostname": worker.hostname,
                    "__meta_celery_queues": f",{worker.queue},",
                },
            }
        ]
        exporter.wait_for_workers(lambda groups: groups == expected, what="the worker's group")
        request = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/sd/workers")
        with request as response:
            assert response.headers["Content-Type"] == "application/json"
