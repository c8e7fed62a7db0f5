"""The worker's endpoint: options, errors, lifecycle — on real worker processes."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from tests.bootsteps.test_tap import MIX_EXPECTED, T, assert_counts, run_mix
from tests.certs import make_pki
from tests.support import (
    Broker,
    RedisServer,
    free_port,
    free_port_range,
    http_get,
    listening,
    promtool_check_metrics,
    run_refused,
    running_worker,
    unique,
    wait_for,
    worker_command,
)


def run_worker_command(
    broker: Broker,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """A worker that is expected to refuse to start."""
    queue = unique("q")
    command = worker_command(queue, name=unique("w"), pool="solo", concurrency=1, extra_args=args)
    return run_refused(broker, command, queue, env)


def our_lines(output: str) -> list[str]:
    """What the worker printed, minus Celery's warning about running as root: from its
    ``SecurityWarning:`` line to the indented line of source that issued it (which differs
    between Celery versions)."""
    lines = output.strip().splitlines()
    warning = next((i for i, line in enumerate(lines) if "SecurityWarning:" in line), None)
    if warning is None:
        return lines
    source = next(i for i in range(warning + 1, len(lines)) if lines[i].startswith(" "))
    return lines[source + 1 :]


def test_a_busy_port_stops_the_worker_with_one_line(redis_broker: Broker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_worker_command(
            redis_broker, "--prom-port", str(port), "--prom-host", "127.0.0.1"
        )

    assert result.returncode == 1
    assert our_lines(result.stdout + result.stderr) == [
        f"Error: celery-prom: port {port} on 127.0.0.1 is already in use"
    ]


def test_a_range_without_a_free_port_stops_the_worker_with_one_line(redis_broker: Broker) -> None:
    ports = free_port_range(3)
    with listening(ports):
        result = run_worker_command(
            redis_broker, "--prom-port", f"{ports[0]}-{ports[-1]}", "--prom-host", "127.0.0.1"
        )

    assert result.returncode == 1
    assert our_lines(result.stdout + result.stderr) == [
        f"Error: celery-prom: every port of {ports[0]}-{ports[-1]} on 127.0.0.1 is already in use"
    ]


SECRET_URL = "redis://:Sentinel-p4ss-0c1d@127.0.0.1:1/0"
NOT_A_PORT = "is not a port or a range of ports like 9808-9827."
BAD_PORT_EVERYWHERE = {"CELERY_PROM_PORT": "env", "CPTEST_CONF": '{"celery_prom_port": "conf"}'}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("--prom-port", "http"),
            {},
            f"Invalid value for '--prom-port': 'http' {NOT_A_PORT}",
        ),
        (
            (),
            {"CELERY_PROM_PORT": "99999"},
            "Invalid value for 'CELERY_PROM_PORT': 99999 is not in the range 0<=x<=65535.",
        ),
        (
            (),
            {"CPTEST_CONF": '{"celery_prom_port": -1}'},
            f"Invalid value for 'app.conf.celery_prom_port': -1 {NOT_A_PORT}",
        ),
        (
            ("--prom-host", "what?"),
            {},
            "Invalid value for '--prom-host': 'what?' is not a host name or IP address.",
        ),
        (
            (),
            {"CELERY_PROM_PORT": "9900-9800"},
            "Invalid value for 'CELERY_PROM_PORT': '9900-9800' is not a range of ports: 9900 is "
            "above 9800.",
        ),
        (
            ("--prom-advertise", "w1:http"),
            {},
            "Invalid value for '--prom-advertise': 'w1:http' is not host[:port].",
        ),
        # A bad value names the source that won: each beats the ones after it.
        (
            ("--prom-port", "cli"),
            BAD_PORT_EVERYWHERE,
            f"Invalid value for '--prom-port': 'cli' {NOT_A_PORT}",
        ),
        (
            (),
            BAD_PORT_EVERYWHERE,
            f"Invalid value for 'CELERY_PROM_PORT': 'env' {NOT_A_PORT}",
        ),
        (
            ("--prom-port", SECRET_URL),
            {},
            "Invalid value for '--prom-port': 'redis://:**@127.0.0.1:1/0' is not a port or a "
            "range of ports like 9808-9827.",
        ),
        # With only the step added, the settings are read from the environment and app.conf.
        (
            (),
            {"CPTEST_INSTRUMENTATION": "step", **BAD_PORT_EVERYWHERE},
            f"Invalid value for 'CELERY_PROM_PORT': 'env' {NOT_A_PORT}",
        ),
        (
            (),
            {"CPTEST_INSTRUMENTATION": "step", "CPTEST_CONF": '{"celery_prom_port": "conf"}'},
            f"Invalid value for 'app.conf.celery_prom_port': 'conf' {NOT_A_PORT}",
        ),
        (
            (),
            {"CELERY_PROM_RUNTIME_BUCKETS": SECRET_URL},
            "Invalid value for 'CELERY_PROM_RUNTIME_BUCKETS': 'redis://:**@127.0.0.1:1/0' is "
            "not a list of numbers.",
        ),
    ],
)
def test_bad_options_stop_the_worker_with_one_line_and_status_2(
    redis_broker: Broker, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run_worker_command(redis_broker, *args, env=env)

    assert result.returncode == 2
    assert our_lines(result.stdout + result.stderr) == [f"Error: celery-prom: {message}"]


def test_worker_help_shows_the_options_types_defaults_and_environment_variables(
    redis_broker: Broker,
) -> None:
    result = run_worker_command(
        redis_broker, "--help", env={"CPTEST_CONF": '{"celery_prom_host": "10.0.0.5"}'}
    )
    text = " ".join(result.stdout.split())

    assert result.returncode == 0
    for entry in [
        "celery-prom Options: --prom-",
        "--prom-port PORT[-PORT] Port of the worker's /metrics endpoint, or a range "
        "(9808-9827) to take the first free port of; 0 turns metrics off. App setting: "
        "celery_prom_port. [env var: CELERY_PROM_PORT; default: 9808]",
        # The app's setting is the default: the command line and the environment beat it.
        "--prom-host HOST Address the endpoint listens on. App setting: celery_prom_host. "
        "[env var: CELERY_PROM_HOST; default: 10.0.0.5]",
        "--prom-advertise HOST[:PORT] Address the exporter's /sd/workers gives Prometheus",
        "[env var: CELERY_PROM_ADVERTISE]",
        "--prom-web-config FILE",
        "[env var: CELERY_PROM_WEB_CONFIG]",
    ]:
        assert entry in text


def test_port_zero_on_the_command_line_turns_the_endpoint_off(
    redis_broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    with running_worker(
        redis_broker, tmp_path, pool="solo", port=port, wait=False, extra_args=("--prom-port", "0")
    ) as worker:
        wait_for(worker.is_ready, what="the worker to be ready")

        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert "celery-prom" not in worker.output()


def test_the_endpoint_can_be_configured_in_app_conf(redis_broker: Broker, tmp_path: Path) -> None:
    port = free_port()
    conf = {"celery_prom_port": port, "celery_prom_host": "127.0.0.1"}
    # An empty variable counts as unset, so app.conf applies.
    env = {"CELERY_PROM_PORT": "", "CELERY_PROM_HOST": "", "CPTEST_CONF": json.dumps(conf)}

    with running_worker(redis_broker, tmp_path, pool="solo", port=port, env=env):
        health = json.loads(http_get(f"http://127.0.0.1:{port}/health"))

    assert health == {"healthy": True, "checks": {"metrics": "ok", "tap": "installed"}}


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_the_port_is_free_once_the_worker_has_stopped(
    redis_broker: Broker, tmp_path: Path, pool: str
) -> None:
    with running_worker(
        redis_broker, tmp_path, pool=pool, extra_args=("--max-tasks-per-child", "1")
    ) as worker:
        port = worker.port
    assert worker.process.returncode == 0

    # As a restarted worker would: SO_REUSEADDR passes TIME_WAIT, never another listener.
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_health_and_landing_page(redis_broker: Broker, tmp_path: Path) -> None:
    with running_worker(redis_broker, tmp_path, pool="solo") as worker:
        health = json.loads(http_get(f"http://127.0.0.1:{worker.port}/health"))
        page = http_get(f"http://127.0.0.1:{worker.port}/")

    assert health == {"healthy": True, "checks": {"metrics": "ok", "tap": "installed"}}
    assert f"celery-prom: {worker.hostname}" in page


def test_adding_only_the_worker_step_is_enough(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(
        redis_broker,
        tmp_path,
        pool="threads",
        concurrency=2,
        env={"CPTEST_INSTRUMENTATION": "step"},
    ) as worker:
        scrape = run_mix(worker, client_app_for(redis_broker, worker.queue))

    assert_counts(scrape, worker, MIX_EXPECTED)


def test_a_real_scrape_passes_promtool(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork") as worker:
        run_mix(worker, client_app_for(redis_broker, worker.queue))
        text = worker.scrape().text

    assert promtool_check_metrics(text) == []


def listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port and state == "0A":  # 0A: LISTEN
            return inode
    raise AssertionError(f"nothing listens on {port}")


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def test_pool_children_do_not_hold_the_listening_socket(
    redis_broker: Broker, tmp_path: Path
) -> None:
    with running_worker(redis_broker, tmp_path, pool="prefork", concurrency=2) as worker:
        inode = listening_inode(worker.port)
        children_file = Path(f"/proc/{worker.process.pid}/task/{worker.process.pid}/children")
        children = [int(pid) for pid in children_file.read_text().split()]

        assert inode in socket_inodes(worker.process.pid)
        assert len(children) == 2
        # Each child closes its copy as it initialises, which may come after "ready.".
        wait_for(
            lambda: not [pid for pid in children if inode in socket_inodes(pid)],
            what="the pool children to close the listening socket",
        )


def test_buckets_and_caps_come_from_the_environment(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    env = {
        "CELERY_PROM_RUNTIME_BUCKETS": "0.5,2",
        "CELERY_PROM_QUEUE_WAIT_BUCKETS": "60",
        "CELERY_PROM_MAX_TASK_NAMES": "1",
    }
    with running_worker(redis_broker, tmp_path, pool="solo", env=env) as worker:
        app = client_app_for(redis_broker, worker.queue)
        app.send_task("cptest_tasks.noop")
        app.send_task("cptest_tasks.sleep", args=[0.01])
        scrape = worker.wait_for_scrape(
            lambda s: s.total("celery_task_succeeded_total") == 2, what="two successes"
        )

    first = {"name": "cptest_tasks.noop", "hostname": worker.hostname, "queue_name": worker.queue}
    overflow = {**first, "name": "_other"}
    assert {
        dict(labels)["le"] for labels in scrape.series("celery_task_runtime_seconds_bucket")
    } == {"0.5", "2.0", "+Inf"}
    assert {
        dict(labels)["le"] for labels in scrape.series("celery_task_queue_wait_seconds_bucket")
    } == {"60.0", "+Inf"}
    assert scrape.value("celery_task_succeeded_total", **first) == 1
    assert scrape.value("celery_task_succeeded_total", **overflow) == 1
    assert scrape.value("celery_prom_label_overflow_total", label="name") == 3


#: Runtime buckets that sleeps of 0, 0.4 and 1.2 s fall into one each; one queue-wait bucket.
EXEMPLAR_BUCKETS = {"runtime_buckets": "0.2,1", "queue_wait_buckets": "60"}


#: What Prometheus asks for first when it can store exemplars.
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"


def scrape_exemplars(port: int, sample: str) -> dict[str, str]:
    """The exemplar task ids of ``sample``'s lines on an OpenMetrics scrape, by ``le``
    (the bucket samples of one series)."""
    text = http_get(f"http://127.0.0.1:{port}/metrics", {"Accept": OPENMETRICS_ACCEPT})
    return {
        line.labels["le"]: line.exemplar.labels["task_id"]
        for family in parse_openmetrics(text)
        for line in family.samples
        if line.name == sample and line.exemplar is not None
    }


def send_sleeps_into_each_bucket(app: Any) -> dict[str, str]:
    """Three sleep tasks, one per runtime bucket; their task ids by the bucket's ``le``."""
    return {
        le: app.send_task(f"{T}sleep", args=[seconds]).id
        for le, seconds in (("0.2", 0.0), ("1.0", 0.4), ("+Inf", 1.2))
    }


@pytest.mark.slow
def test_an_openmetrics_scrape_shows_the_tasks_run_as_exemplars(
    redis_broker: Broker, tmp_path: Path, client_app_for: Callable[..., Any]
) -> None:
    env = {f"CELERY_PROM_{key.upper()}": value for key, value in EXEMPLAR_BUCKETS.items()}
    with running_worker(redis_broker, tmp_path, concurrency=1, env=env) as worker:
        task_ids = send_sleeps_into_each_bucket(client_app_for(redis_broker, worker.queue))
        worker.wait_for_scrape(
            lambda s: s.total("celery_task_succeeded_total") == 3, what="three successes"
        )
        runtime = scrape_exemplars(worker.port, "celery_task_runtime_seconds_bucket")
        queue_wait = scrape_exemplars(worker.port, "celery_task_queue_wait_seconds_bucket")
        text = worker.scrape().text

    assert runtime == task_ids
    # -c 1 starts them in the order sent: the last one is the latest observation.
    assert queue_wait == {"60.0": task_ids["+Inf"]}
    assert " # {" not in text


def test_a_worker_serves_tls_with_basic_auth(redis_broker: Broker, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    hashed = bcrypt.hashpw(b"scrape-me", bcrypt.gensalt(rounds=4)).decode()
    web_config = tmp_path / "web.yml"
    web_config.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
        f"  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  prometheus: {hashed}\n"
    )
    context = ssl.create_default_context(cafile=str(pki.ca))
    credentials = base64.b64encode(b"prometheus:scrape-me").decode()

    def get(headers: dict[str, str]) -> int:
        request = urllib.request.Request(
            f"https://127.0.0.1:{worker.port}/metrics", headers=headers
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    with running_worker(
        redis_broker,
        tmp_path,
        pool="solo",
        wait=False,
        extra_args=("--prom-web-config", str(web_config)),
    ) as worker:
        wait_for(worker.is_ready, what="the worker to be ready")
        assert get({}) == 401
        assert get({"Authorization": f"Basic {credentials}"}) == 200


def test_a_bad_web_config_stops_the_worker_with_one_line(
    redis_broker: Broker, tmp_path: Path
) -> None:
    web_config = tmp_path / "web.yml"
    web_config.write_text("basic_auth_users:\n  prometheus: not-a-hash\n")

    result = run_worker_command(redis_broker, "--prom-web-config", str(web_config))

    assert result.returncode == 2
    assert our_lines(result.stdout + result.stderr) == [
        f"Error: celery-prom: web config {web_config}: basic_auth_users: the password of "
        "'prometheus' is not a bcrypt hash"
    ]


SENTINEL = "Sentinel-p4ss-7f3a"


def test_a_broker_password_never_leaks_from_the_worker(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path, "--requirepass", "the-real-password")
    redis_server.start()
    broker = Broker(f"redis://:{SENTINEL}@127.0.0.1:{redis_server.port}/0")
    try:
        with running_worker(
            broker, tmp_path, pool="prefork", wait=False, extra_args=("--loglevel=DEBUG",)
        ) as worker:
            wait_for(
                lambda: worker.output().count("Cannot connect to") >= 2,
                what="the worker to retry its broker connection",
            )
            metrics = http_get(f"http://127.0.0.1:{worker.port}/metrics")
            health = http_get(f"http://127.0.0.1:{worker.port}/health")
    finally:
        redis_server.stop()

    for text in (worker.output(), metrics, health):
        assert SENTINEL not in text


def open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_a_thousand_scrapes_leave_no_descriptor_behind(
    redis_broker: Broker, tmp_path: Path
) -> None:
    with running_worker(redis_broker, tmp_path, pool="threads") as worker:
        for _ in range(10):  # whatever is opened on first use is open now
            worker.scrape()
        before = open_descriptors(worker.process.pid)
        for _ in range(1000):
            worker.scrape()
        # Connection threads close their sockets as they finish, so the count comes back to
        # the baseline; the worker's own broker sockets may close meanwhile, never open more.
        wait_for(
            lambda: open_descriptors(worker.process.pid) <= before,
            timeout=10,
            what=f"descriptors to come back to {before}",
        )
