"""Queue lengths from Amazon SQS: messages ready, in flight and delayed, per queue.

kombu's SQS channel names the queues (``queue_name_prefix`` and the characters SQS does not
allow, or ``predefined_queues``) and builds the boto3 clients (``region``, ``is_secure``,
the endpoint of the URL, per-queue credentials, STS), so the exporter reads exactly the
queues the workers use. It asks with ``GetQueueUrl`` and ``GetQueueAttributes`` alone:
kombu's own sizing declares a queue it does not find, and the exporter must never create
anything in the account. Checked against kombu 5.3 to 5.7, whose SQS channel has the same
``canonical_queue_name``, ``predefined_queues`` and ``sqs(queue=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kombu import Connection

from celery_prom.exporter.queues import ConnectedQueueProbe, QueueSize

READY = "ApproximateNumberOfMessages"
IN_FLIGHT = "ApproximateNumberOfMessagesNotVisible"
DELAYED = "ApproximateNumberOfMessagesDelayed"


class SqsQueueProbe(ConnectedQueueProbe):
    """Two requests per queue, each bounded by the broker timeout: the queue's URL (a
    predefined queue has its own), then its three message counts. A queue that does not
    exist counts as empty; one that ``predefined_queues`` does not list gets no sample,
    as kombu could not use it either."""

    def __init__(self, url: str, transport_options: Mapping[str, Any], timeout: float) -> None:
        super().__init__()
        self._url = url
        # botocore waits 60 s and retries by default; a scrape waits ``timeout`` at most.
        client_config = {
            **transport_options.get("client-config", {}),
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"total_max_attempts": 1},
        }
        self._options = {**transport_options, "client-config": client_config}

    def _sizes(self, names: Sequence[str]) -> list[QueueSize]:
        channel = self._open_channel()
        sizes = (self._size(channel, name) for name in names)
        return [size for size in sizes if size is not None]

    def _size(self, channel: Any, name: str) -> QueueSize | None:
        sqs_name = channel.canonical_queue_name(name)
        predefined = channel.predefined_queues
        if predefined and sqs_name not in predefined:
            return None
        client = channel.sqs(queue=sqs_name)
        try:
            if predefined:
                url = predefined[sqs_name]["url"]
            else:
                url = client.get_queue_url(QueueName=sqs_name)["QueueUrl"]
            reply = client.get_queue_attributes(
                QueueUrl=url, AttributeNames=[READY, IN_FLIGHT, DELAYED]
            )
        except client.exceptions.QueueDoesNotExist:
            return QueueSize(name, 0, None, unacked=0, delayed=0)
        counts = reply["Attributes"]
        return QueueSize(
            name,
            int(counts[READY]),
            None,
            unacked=int(counts[IN_FLIGHT]),
            delayed=int(counts[DELAYED]),
        )

    def _open_channel(self) -> Any:
        if self._channel is None:
            self._connection = Connection(self._url, transport_options=self._options)
            self._channel = self._connection.channel()
        return self._channel
