"""Helpers shared by the tests and the benchmarks: real brokers, worker and exporter
subprocesses, scraping, polling.

The benchmarks import this module as ``tests.support`` (with the repository on their
``sys.path``), so it imports nothing but the package's own dependencies: no pytest.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "tests" / "apps"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: The tests' own Redis database; every run also gets a key prefix of its own.
REDIS_DB = 11
AMQP_HOST = "127.0.0.1:5672"
#: The region and key pair of the tests' SQS endpoint (moto accepts any key).
SQS_REGION = "eu-west-1"
SQS_KEY = "cptest-key"
SQS_SECRET = "cptest-secret"
#: Every ``multiprocess_mode`` of prometheus_client's Gauge.
GAUGE_MODES = (
    "all",
    "liveall",
    "sum",
    "livesum",
    "max",
    "livemax",
    "min",
    "livemin",
    "mostrecent",
    "livemostrecent",
)

T = TypeVar("T")
ServerT = TypeVar("ServerT", bound="PrivateServer")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Where ``free_port_range`` looks: below Linux's ephemeral ports (32768 and up), which
#: ``free_port`` and outgoing connections take theirs from.
_RANGE_PORTS = (10000, 32000)


def free_port_range(count: int) -> range:
    """``count`` consecutive ports free on 127.0.0.1 right now, for a worker's port range."""

    def free_from(first: int) -> range | None:
        ports = range(first, first + count)
        with contextlib.ExitStack() as held:
            for port in ports:
                sock = held.enter_context(socket.socket())
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    return None
        return ports

    low, high = _RANGE_PORTS
    return wait_for(
        lambda: free_from(random.randrange(low, high - count)),
        what=f"{count} consecutive free ports",
    )


@contextlib.contextmanager
def listening(ports: range) -> Iterator[None]:
    """Sockets listening on 127.0.0.1 at each of ``ports``, held by this process."""
    with contextlib.ExitStack() as held:
        for port in ports:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Broker:
    """A broker the tests may use: URL plus transport options that isolate this run."""

    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.url.split("://", 1)[0]


class Scrape:
    """One parsed /metrics response."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.samples.get((metric, frozenset(labels.items())))

    def total(self, metric: str, /, **labels: str) -> float:
        """Sum of ``metric`` over every series whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == metric and wanted <= sample_labels
        )

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def by_label(self, name: str, label: str, /, **labels: str) -> dict[str, float]:
        """The series of ``name`` whose labels include ``labels``, keyed by ``label``."""
        wanted = set(labels.items())
        return {
            dict(series)[label]: value
            for series, value in self.series(name).items()
            if wanted <= series
        }


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def scrape(port: int, host: str = "127.0.0.1") -> Scrape:
    return Scrape(http_get(f"http://{host}:{port}/metrics"))


def try_scrape(port: int) -> Scrape | None:
    try:
        return scrape(port)
    except OSError:
        return None


def metric_sum(port: int, name: str) -> float | None:
    """Sum of every sample called ``name`` on a /metrics page, None if unreachable.

    A regular expression rather than ``Scrape``'s full parse: for pages of up to 100 MB,
    polled while the process serving them is being measured.
    """
    try:
        text = http_get(f"http://127.0.0.1:{port}/metrics", timeout=60)
    except OSError:
        return None
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}\n]*}})? (\S+)$", re.MULTILINE)
    return sum(float(match.group(1)) for match in pattern.finditer(text))


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@dataclass
class ServingProcess(abc.ABC):
    """A subprocess answering HTTP on ``port`` (workers and exporters: /metrics), its output
    going to ``log``."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    @abc.abstractmethod
    def title(self) -> str:
        """What it is, for messages."""

    def wait_for_scrape(
        self, probe: Callable[[Scrape], bool], timeout: float = 30.0, what: str = "metrics"
    ) -> Scrape:
        def check() -> Scrape | None:
            self.assert_alive()
            current = try_scrape(self.port)
            return current if current is not None and probe(current) else None

        return wait_for(check, timeout=timeout, what=f"{what} on {self.title}")

    def assert_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.title} exited with {self.process.returncode}:\n{self.output()}"
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def logged_port(self) -> int | None:
        """The port its log says celery-prom serves on."""
        self.assert_alive()
        found = re.search(r"celery-prom: serving http://\S+:(\d+)/metrics", self.output())
        return int(found.group(1)) if found else None

    def stop(self, timeout: float = 30.0) -> int:
        return stop_process(self.process, timeout)


@dataclass
class WorkerProcess(ServingProcess):
    """A ``celery worker`` subprocess running the test app with the bootstep."""

    name: str
    queue: str

    @property
    def title(self) -> str:
        return f"worker {self.name}"

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def scrape(self) -> Scrape:
        return scrape(self.port)

    def is_ready(self) -> bool:
        self.assert_alive()
        return "ready." in self.output()

    def wait_until_ready(self) -> None:
        """Until it answers and says it is ready; else it is stopped."""
        _wait_until_ready(self, self.is_ready)


def app_env(broker: Broker, queue: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CPTEST_BROKER_URL=broker.url,
        CPTEST_TRANSPORT_OPTIONS=json.dumps(broker.transport_options),
        CPTEST_QUEUE=queue,
        PYTHONPATH=os.pathsep.join([str(APPS), str(REPO), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def worker_command(
    queue: str,
    *,
    name: str,
    pool: str = "prefork",
    concurrency: int = 2,
    app_module: str = "cptest_tasks",
    loglevel: str = "INFO",
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """``celery -A app_module worker`` consuming ``queue`` only, without mingle."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app_module,
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-Q",
        queue,
        "-n",
        f"{name}@%h",
        f"--loglevel={loglevel}",
        "--without-mingle",
        *extra_args,
    ]


def exporter_command(broker_url: str, port: int, *args: str) -> list[str]:
    """``celery-prom exporter`` of ``broker_url``, serving on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "celery_prom.cli",
        "exporter",
        "--broker-url",
        broker_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]


def start_worker(
    broker: Broker,
    tmp_path: Path,
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    queue: str | None = None,
    port: int | range | None = None,
    wait: bool = True,
    app_module: str = "cptest_tasks",
    cwd: Path = REPO,
) -> WorkerProcess:
    """Start ``celery -A app_module worker`` in ``cwd`` (which is on its import path), its
    endpoint on ``port``, or on the first free port of a range of them."""
    queue = queue or unique("q")
    name = unique("w")
    port = free_port() if port is None else port
    args = worker_command(
        queue,
        name=name,
        pool=pool,
        concurrency=concurrency,
        app_module=app_module,
        extra_args=extra_args,
    )
    log = tmp_path / f"{name}.log"
    process = _spawn(
        args, app_env(broker, queue, **{**endpoint_env(port), **(env or {})}), log, cwd
    )
    # For a range, 0 until _wait_until_ready reads the port from the log.
    known_port = 0 if isinstance(port, range) else port
    worker = WorkerProcess(known_port, process, log, name=name, queue=queue)
    if wait:
        worker.wait_until_ready()
    return worker


def endpoint_env(port: int | range) -> dict[str, str]:
    """celery-prom's endpoint on 127.0.0.1:``port`` (or the first free port of a range),
    through the environment, which works however the app added celery-prom."""
    setting = f"{port.start}-{port.stop - 1}" if isinstance(port, range) else str(port)
    return {"CELERY_PROM_PORT": setting, "CELERY_PROM_HOST": "127.0.0.1"}


def _spawn(
    args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_until_ready(process: ServingProcess, ready: Callable[[], bool]) -> None:
    """Until its endpoint answers (on the port its log names, when it was given a range) and
    ``ready()``; else it is stopped (the caller never gets it, so nobody else could stop it)."""
    try:
        if not process.port:
            process.port = wait_for(process.logged_port, what=f"{process.title}'s port")
        process.wait_for_scrape(lambda s: True, what="the endpoint to answer")
        wait_for(ready, what=f"{process.title} to be ready")
    except BaseException:
        process.stop()
        raise


@contextlib.contextmanager
def running_worker(*args: Any, **kwargs: Any) -> Iterator[WorkerProcess]:
    worker = start_worker(*args, **kwargs)
    try:
        yield worker
    finally:
        worker.stop()


@dataclass
class BeatProcess(ServingProcess):
    """A ``celery beat`` subprocess of the beat test app (``tests/apps/cptest_beat.py``)."""

    name: str
    queue: str

    @property
    def title(self) -> str:
        return f"beat {self.name}"

    def scrape(self) -> Scrape:
        return scrape(self.port)


def beat_command(schedule_file: Path, *extra_args: str, loglevel: str = "INFO") -> list[str]:
    """``celery -A cptest_beat beat`` keeping its state in ``schedule_file``."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "cptest_beat",
        "beat",
        "-s",
        str(schedule_file),
        f"--loglevel={loglevel}",
        *extra_args,
    ]


def start_beat(
    broker: Broker,
    tmp_path: Path,
    schedule: dict[str, float | str],
    *,
    queue: str | None = None,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    schedule_file: Path | None = None,
    wait: bool = True,
) -> BeatProcess:
    """Start beat sending ``schedule``'s entries to ``queue``, keeping its state in
    ``schedule_file`` (a new file unless given)."""
    queue = queue or unique("q")
    name = unique("beat")
    port = free_port()
    args = beat_command(schedule_file or tmp_path / f"{name}-schedule", *extra_args)
    beat_env = {**endpoint_env(port), "CPTEST_BEAT_SCHEDULE": json.dumps(schedule), **(env or {})}
    log = tmp_path / f"{name}.log"
    beat = BeatProcess(
        port, _spawn(args, app_env(broker, queue, **beat_env), log), log, name, queue
    )
    if wait:
        _wait_until_ready(beat, lambda: True)
    return beat


@contextlib.contextmanager
def running_beat(*args: Any, **kwargs: Any) -> Iterator[BeatProcess]:
    beat = start_beat(*args, **kwargs)
    try:
        yield beat
    finally:
        beat.stop()


def redis_queue_length(broker: Broker, queue: str) -> int:
    """Messages waiting in ``queue`` on a Redis broker (its key under the broker's prefix)."""
    client = redis.Redis.from_url(broker.url)
    try:
        return int(client.llen(broker.transport_options.get("global_keyprefix", "") + queue))
    finally:
        client.close()


def wait_for_sends_to_match_the_broker(
    beat: BeatProcess, broker: Broker, already: float = 0.0
) -> Scrape:
    """A scrape whose sends (beyond ``already``) equal the messages in beat's queue.

    Beat counts a send once the broker took it, so between two sends the two agree.
    """

    def agreeing() -> Scrape | None:
        before = redis_queue_length(broker, beat.queue)
        scrape = beat.scrape()
        after = redis_queue_length(broker, beat.queue)
        sent = scrape.total("celery_beat_tasks_sent_total") - already
        return scrape if before == after == sent else None

    return wait_for(agreeing, what=f"{beat.title}'s sends to match the broker's messages")


def run_refused(
    broker: Broker, command: list[str], queue: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command of a test app consuming or sending to ``queue``, expected to refuse to
    start."""
    return subprocess.run(
        command,
        cwd=REPO,
        env=app_env(broker, queue, **(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_test_app(broker: Broker, queue: str) -> Any:
    """The test app, configured in this process as the workers see it (for sending)."""
    app = Celery("cptest-client")
    app.conf.update(
        broker_url=broker.url,
        broker_transport_options=broker.transport_options,
        task_default_queue=queue,
    )
    return app


class PrivateServer(abc.ABC):
    """A server of a test's own on a free port of 127.0.0.1, with a folder of its own, for
    tests and benchmarks that start, stop, freeze or restart it (on the same port)."""

    #: Its program, for the folder's name and messages.
    program = "server"

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory / f"{self.program}-{self.port}"
        self.dir.mkdir()
        self.process: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """Its command line."""

    def start(self) -> None:
        with (self.dir / "output.log").open("ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._answers, what=f"{self.program} on {self.port}")

    def stop(self) -> None:
        """Kill it (SIGKILL: as abrupt as a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            output = (self.dir / "output.log").read_text(errors="replace")
            raise AssertionError(f"{self.program} exited with {self.process.returncode}:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


@contextlib.contextmanager
def started(server: ServerT) -> Iterator[ServerT]:
    """``server``, started, and stopped on the way out."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RedisServer(PrivateServer):
    """A private ``redis-server`` with stock settings."""

    program = "redis"

    def __init__(self, directory: Path, *extra_args: str) -> None:
        super().__init__(directory)
        self.extra_args = extra_args

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def broker(self) -> Broker:
        return Broker(self.url)

    def client(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(port=self.port, password=password, socket_timeout=5)

    def command(self) -> list[str]:
        """Its command line; a later option overrides an earlier one of the same name."""
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            *self.extra_args,
        ]


@contextlib.contextmanager
def private_redis(directory: Path, *args: str, start: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(directory, *args)
    if start:
        server.start()
    try:
        yield server
    finally:
        server.stop()


class SqsServer(PrivateServer):
    """A private ``moto_server``: a local SQS endpoint holding everything in memory."""

    program = "moto"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"sqs://{SQS_KEY}:{SQS_SECRET}@127.0.0.1:{self.port}"

    def broker(self, **transport_options: Any) -> Broker:
        """The endpoint as kombu reaches it: plain HTTP, in the tests' region."""
        return Broker(self.url, {"region": SQS_REGION, "is_secure": False, **transport_options})

    def client(self, region: str = SQS_REGION) -> Any:
        return boto3.client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id=SQS_KEY,
            aws_secret_access_key=SQS_SECRET,
        )

    def queue_names(self, region: str = SQS_REGION) -> list[str]:
        """Every queue of the region."""
        urls = self.client(region).list_queues().get("QueueUrls", [])
        return sorted(url.rsplit("/", 1)[1] for url in urls)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]


#: promtool's exit status when it parsed the exposition but its lint found problems.
_PROMTOOL_LINT_PROBLEMS = 3


def promtool_check_metrics(text: str) -> list[str]:
    """The lint problems ``promtool check metrics`` finds in an exposition.

    An exposition promtool cannot parse fails the calling test outright: only lint findings
    (exit 3) are returned, so a test can name the ones it accepts.
    """
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode in (0, _PROMTOOL_LINT_PROBLEMS), (
        f"promtool check metrics: exit {result.returncode}: {output}"
    )
    return output.splitlines()
