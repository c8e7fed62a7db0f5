"""``/sd/workers``: the workers to scrape, as Prometheus' HTTP service discovery
(``http_sd_configs``) reads them.

One target group per worker that sends its metrics address in its heartbeats (see
``WorkerLiveness.targets`` for which), with two labels for relabeling:
``__meta_celery_hostname``, its Celery hostname, and ``__meta_celery_queues``, the queues it
consumes from as far as queue discovery knows them, sorted and comma-separated with a comma
at each end, as Prometheus' own discoveries write lists (``,celery,reports,``, or ``,,``
while none are known), so that the regex ``.*,reports,.*`` matches one queue exactly.

They are ``__meta_`` labels, which Prometheus drops after relabeling, rather than plain
ones: the worker's series carry ``hostname`` already, and a target label of that name would
rename theirs to ``exported_hostname``.
"""

from __future__ import annotations

import json

from celery_prom.exporter.liveness import WorkerLiveness
from celery_prom.exporter.queues import QueueDiscovery

CONTENT_TYPE = "application/json"
HOSTNAME_LABEL = "__meta_celery_hostname"
QUEUES_LABEL = "__meta_celery_queues"


class WorkerTargets:
    """The target groups of the workers the exporter knows, built per request."""

    def __init__(self, liveness: WorkerLiveness, queues: QueueDiscovery) -> None:
        self._liveness = liveness
        self._queues = queues

    def groups(self) -> list[dict[str, object]]:
        return [
            {
                "targets": [address],
                "labels": {
                    HOSTNAME_LABEL: hostname,
                    QUEUES_LABEL: f",{','.join(sorted(self._queues.queues_of(hostname)))},",
                },
            }
            for hostname, address in self._liveness.targets()
        ]

    def render(self) -> tuple[bytes, str]:
        return json.dumps(self.groups()).encode("utf-8"), CONTENT_TYPE
