"""Queue lengths from a real (local) SQS endpoint: every count, every kombu naming option,
and never a queue created."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celery_prom.exporter.queues import QueueSize
from celery_prom.exporter.sqs import SqsQueueProbe
from tests.exporter_process import assert_down_while_frozen, running_exporter_for
from tests.support import SQS_REGION, SqsServer, started, unique

#: Seconds the messages a test holds stay hidden or delayed: longer than any test.
HOLD = 600


def fill(client: Any, name: str, *, ready: int, in_flight: int = 0, delayed: int = 0) -> None:
    """A queue holding that many messages ready, received and not deleted, and delayed."""
    url = client.create_queue(QueueName=name)["QueueUrl"]
    for _ in range(ready + in_flight):
        client.send_message(QueueUrl=url, MessageBody="{}")
    for _ in range(delayed):
        client.send_message(QueueUrl=url, MessageBody="{}", DelaySeconds=HOLD)
    received = (
        client.receive_message(QueueUrl=url, MaxNumberOfMessages=in_flight, VisibilityTimeout=HOLD)
        if in_flight
        else {}
    )
    assert len(received.get("Messages", [])) == in_flight


def probe_of(server: SqsServer, **options: Any) -> SqsQueueProbe:
    broker = server.broker(**options)
    return SqsQueueProbe(broker.url, broker.transport_options, timeout=5)


def test_ready_in_flight_and_delayed_messages_and_a_missing_queue_is_empty_not_created(
    sqs_server: SqsServer,
) -> None:
    busy, missing = unique("busy"), unique("missing")
    fill(sqs_server.client(), busy, ready=3, in_flight=2, delayed=4)
    before = sqs_server.queue_names()

    sizes = probe_of(sqs_server).sizes([busy, missing])

    assert sizes == [
        QueueSize(busy, 3, None, unacked=2, delayed=4),
        QueueSize(missing, 0, None, unacked=0, delayed=0),
    ]
    assert sqs_server.queue_names() == before


def test_queue_names_are_those_kombu_gives_them_with_a_prefix(sqs_server: SqsServer) -> None:
    prefix = unique("app") + "-"
    # kombu replaces what SQS does not allow in a name: "jobs.high" is "jobs-high".
    fill(sqs_server.client(), f"{prefix}jobs-high", ready=2)
    fill(sqs_server.client(), "jobs-high", ready=7)  # the same name without the prefix

    sizes = probe_of(sqs_server, queue_name_prefix=prefix).sizes(["jobs.high"])

    assert sizes == [QueueSize("jobs.high", 2, None, unacked=0, delayed=0)]


def test_the_region_option_picks_the_region(sqs_server: SqsServer) -> None:
    name = unique("far")
    fill(sqs_server.client("us-west-2"), name, ready=5)
    before = {region: sqs_server.queue_names(region) for region in ("us-west-2", SQS_REGION)}

    assert probe_of(sqs_server, region="us-west-2").sizes([name]) == [
        QueueSize(name, 5, None, unacked=0, delayed=0)
    ]
    assert probe_of(sqs_server).sizes([name]) == [QueueSize(name, 0, None, unacked=0, delayed=0)]
    assert {region: sqs_server.queue_names(region) for region in before} == before


def test_predefined_queues_are_read_at_their_urls_and_no_other_queue(
    sqs_server: SqsServer,
) -> None:
    listed, gone, unlisted = unique("listed"), unique("gone"), unique("unlisted")
    client = sqs_server.client()
    fill(client, listed, ready=1, in_flight=1)
    fill(client, unlisted, ready=9)
    predefined = {
        name: {"url": f"{sqs_server.endpoint}/123456789012/{name}"} for name in (listed, gone)
    }

    sizes = probe_of(sqs_server, predefined_queues=predefined).sizes([listed, gone, unlisted])

    assert sizes == [
        QueueSize(listed, 1, None, unacked=1, delayed=0),
        QueueSize(gone, 0, None, unacked=0, delayed=0),
    ]


@pytest.mark.slow
def test_a_frozen_endpoint_turns_into_broker_down_not_a_hung_scrape(tmp_path: Path) -> None:
    with started(SqsServer(tmp_path)) as server:
        fill(server.client(), "jobs", ready=1)
        with running_exporter_for(
            server.broker(), tmp_path, "-Q", "jobs", "--broker-timeout", "1"
        ) as exporter:
            exporter.wait_for_scrape(
                lambda s: s.value("celery_queue_length", queue_name="jobs") == 1, what="1 ready"
            )
            assert server.process is not None
            assert_down_while_frozen(exporter, server.process, "jobs", 1)
