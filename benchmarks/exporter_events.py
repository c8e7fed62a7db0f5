"""Event flood: how many Celery events per second each consumer keeps up with.

    .venv/bin/python benchmarks/exporter_events.py [--rates 15000,18000,24000,30000]
        [--seconds 8] [--json results.json]

Needs the ``bench`` extra (Flower). On a private redis-server with stock settings, separate
publisher processes offer task events (received, started, succeeded of 20 task names from 8
worker hostnames; one event per message, the worst case) at a fixed rate. Four consumers
take the same floods one after another, in the same run:

* ``celery-prom exporter`` (its Redis event stream, hiredis parsing, the shared recorder),
* the same exporter's recorder behind its generic kombu consumer (the path other brokers
  take), to show what reading Redis directly buys,
* Flower 2 (``celery flower``; its /metrics counts ``flower_events_total``),
* Celery's stock ``EventReceiver`` doing nothing but counting (an upper bound for anything
  built on it).

For each, the table shows the rate actually offered, events processed, events lost (sent
but never counted: Redis cut a lagging subscriber off, or the flood ended before it caught
up within the settle time) and the processing rate (events over the time from the flood's
start until the last one was counted). Results also go to ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from celery import Celery
from prometheus_client import Counter, start_http_server

from celery_prom.config import ExporterSettings
from celery_prom.exporter.receiver import EventReceiver
from celery_prom.exporter.service import Exporter
from celery_prom.exporter.streams import EventSource, KombuEventStream

# Run as a script: tests.support from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import (
    REPO,
    exporter_command,
    free_port,
    metric_sum,
    private_redis,
    stop_process,
    wait_for,
)

PUBLISHERS = 2
HOSTS_PER_PUBLISHER = 4
TASK_NAMES = 20
SETTLE_SECONDS = 3.0
MAX_DRAIN_SECONDS = 120.0


@dataclass
class Result:
    consumer: str
    target_rate: int
    offered_rate: float
    sent: int
    processed: int
    lost: int
    processing_rate: float


# -- publishing ------------------------------------------------------------------------------


def envelope(event: dict[str, object], routing_key: str) -> bytes:
    body = base64.b64encode(json.dumps(event).encode()).decode()
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"hostname": event["hostname"]},
            "properties": {
                "delivery_mode": 1,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def flood_payloads(index: int, count: int, clock_start: int) -> list[tuple[str, bytes]]:
    payloads: list[tuple[str, bytes]] = []
    clocks = dict.fromkeys(range(HOSTS_PER_PUBLISHER), clock_start)
    now = time.time()
    n = 0
    while len(payloads) < count:
        host = n % HOSTS_PER_PUBLISHER
        hostname = f"bench-p{index}-w{host}@bench"
        task_id = str(uuid.uuid4())
        name = f"bench.task_{n % TASK_NAMES}"
        for type_, fields in (
            (
                "task-received",
                {"name": name, "args": "()", "kwargs": "{}", "retries": 0, "eta": None},
            ),
            ("task-started", {}),
            ("task-succeeded", {"runtime": 0.001, "result": "None"}),
        ):
            clocks[host] += 1
            event = {
                "type": type_,
                "hostname": hostname,
                "uuid": task_id,
                "timestamp": now,
                "utcoffset": 0,
                "pid": 100 + host,
                "clock": clocks[host],
                **fields,
            }
            payloads.append((type_.replace("-", "."), envelope(event, type_.replace("-", "."))))
        n += 1
    return payloads[:count]


def publish(port: int, index: int, rate: float, seconds: float, clock_start: int) -> None:
    count = int(rate * seconds)
    payloads = flood_payloads(index, count, clock_start)
    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    started = time.perf_counter()
    sent = 0
    while sent < count:
        due = min(count, int((time.perf_counter() - started) * rate) + 1)
        for routing_key, payload in payloads[sent:due]:
            pipe.publish(f"/0.celeryev/{routing_key}", payload)
        pipe.execute()
        sent = due
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    print(json.dumps({"sent": sent, "elapsed": elapsed}), flush=True)


def run_flood(
    port: int, rate: int, seconds: float, clock_start: int, on_go: Callable[[], None]
) -> tuple[int, float]:
    """Publishes a flood; ``on_go`` runs once every publisher is ready, just before it."""
    publishers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "publish",
                "--port",
                str(port),
                "--index",
                str(i),
                "--rate",
                str(rate / PUBLISHERS),
                "--seconds",
                str(seconds),
                "--clock-start",
                str(clock_start),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(PUBLISHERS)
    ]
    for publisher in publishers:
        assert publisher.stdout is not None
        assert publisher.stdout.readline().strip() == "ready"
    on_go()
    for publisher in publishers:
        assert publisher.stdin is not None
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
    reports = []
    for publisher in publishers:
        assert publisher.stdout is not None
        reports.append(json.loads(publisher.stdout.readline()))
        publisher.wait()
    return sum(r["sent"] for r in reports), max(r["elapsed"] for r in reports)


# -- consumers -------------------------------------------------------------------------------


@dataclass
class Consumer:
    name: str
    command: list[str]
    port: int
    counter: str

    def count(self) -> float | None:
        return metric_sum(self.port, self.counter)

    def answers(self) -> bool:
        return self.count() is not None


def consumers(redis_port: int) -> list[Consumer]:
    url = f"redis://127.0.0.1:{redis_port}/0"
    ours, flower, stock, kombu_path = free_port(), free_port(), free_port(), free_port()
    return [
        Consumer(
            "celery-prom exporter",
            exporter_command(url, ours, "--log-level", "WARNING"),
            ours,
            "celery_prom_events_received_total",
        ),
        Consumer(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "--broker",
                url,
                "flower",
                "--address=127.0.0.1",
                f"--port={flower}",
                "--logging=warning",
            ],
            flower,
            "flower_events_total",
        ),
        Consumer(
            "celery-prom, kombu path",
            [sys.executable, __file__, "kombu-path", "--broker", url, "--port", str(kombu_path)],
            kombu_path,
            "celery_prom_events_received_total",
        ),
        Consumer(
            "celery EventReceiver",
            [sys.executable, __file__, "stock-receiver", "--broker", url, "--port", str(stock)],
            stock,
            "stock_events_total",
        ),
    ]


def stock_receiver(broker: str, port: int) -> None:
    counter = Counter("stock_events", "Events the stock EventReceiver handled.")
    start_http_server(port, addr="127.0.0.1")
    app = Celery(broker=broker)
    while True:  # Redis cuts a lagging subscriber off; reconnect as Flower does
        try:
            with app.connection_for_read() as connection:
                receiver = app.events.Receiver(
                    connection, handlers={"*": lambda event: counter.inc()}
                )
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except connection.connection_errors:
            time.sleep(1)


def kombu_path(broker: str, port: int) -> None:
    """The exporter's recorder behind its generic kombu consumer (used for brokers other
    than Redis), on Redis: what the direct Redis stream is measured against."""
    exporter = Exporter(ExporterSettings(broker_url=broker, host="127.0.0.1", port=port))
    exporter.bind()
    assert exporter.server is not None
    exporter.server.start()
    EventReceiver(
        lambda: KombuEventStream(
            EventSource(broker, {}, "celeryev", 2.0), exporter.router.on_message_body
        ),
        exporter.status,
        exporter.liveness,
        exporter.losses,
        safe_url=broker,
    ).run()


#: The consumers this script runs itself, by their subcommand.
RECEIVERS: dict[str, Callable[[str, int], None]] = {
    "kombu-path": kombu_path,
    "stock-receiver": stock_receiver,
}


def measure(
    consumer: Consumer, redis_port: int, rate: int, seconds: float, clock_start: int
) -> Result:
    before = consumer.count() or 0
    go: list[float] = []
    sent, elapsed = run_flood(
        redis_port, rate, seconds, clock_start, lambda: go.append(time.monotonic())
    )
    started = go[0]
    last_change, last = time.monotonic(), consumer.count() or 0
    while time.monotonic() - last_change < SETTLE_SECONDS:
        if time.monotonic() - started > seconds + MAX_DRAIN_SECONDS:
            break
        time.sleep(0.1)
        current = consumer.count()
        if current is not None and current != last:
            last, last_change = current, time.monotonic()
    processed = int(last - before)
    return Result(
        consumer.name,
        rate,
        sent / elapsed,
        sent,
        processed,
        sent - processed,
        processed / max(last_change - started, elapsed),
    )


def warm_up(consumer: Consumer, redis_port: int) -> None:
    """Publish single events until the consumer counts one: its subscription is live."""
    client = redis.Redis(port=redis_port)
    payload = flood_payloads(9, 1, 0)[0][1]

    def counted() -> bool:
        client.publish("/0.celeryev/task.received", payload)
        time.sleep(0.2)
        return (consumer.count() or 0) > 0

    wait_for(counted, timeout=60, what=f"{consumer.name} to receive events")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="15000,18000,24000,30000")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as workdir, private_redis(Path(workdir)) as server:
        redis_port = server.port
        for consumer in consumers(redis_port):
            process = subprocess.Popen(consumer.command, cwd=REPO, stdout=subprocess.DEVNULL)
            try:
                wait_for(consumer.answers, timeout=60, what=consumer.name)
                warm_up(consumer, redis_port)
                for n, rate in enumerate(rates):
                    clock_start = (n + 1) * 10_000_000
                    result = measure(consumer, redis_port, rate, args.seconds, clock_start)
                    results.append(result)
                    print(_row(result), flush=True)
            finally:
                stop_process(process)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


def _row(r: Result) -> str:
    return (
        f"{r.consumer:22} target {r.target_rate:6}/s  offered {r.offered_rate:8.0f}/s  "
        f"sent {r.sent:7}  processed {r.processed:7}  lost {r.lost:7}  "
        f"processing {r.processing_rate:8.0f}/s"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        publisher = argparse.ArgumentParser()
        publisher.add_argument("--port", type=int)
        publisher.add_argument("--index", type=int)
        publisher.add_argument("--rate", type=float)
        publisher.add_argument("--seconds", type=float)
        publisher.add_argument("--clock-start", type=int)
        a = publisher.parse_args(sys.argv[2:])
        publish(a.port, a.index, a.rate, a.seconds, a.clock_start)
    elif len(sys.argv) > 1 and sys.argv[1] in RECEIVERS:
        receiver = argparse.ArgumentParser()
        receiver.add_argument("--broker")
        receiver.add_argument("--port", type=int)
        a = receiver.parse_args(sys.argv[2:])
        RECEIVERS[sys.argv[1]](a.broker, a.port)
    else:
        main()
