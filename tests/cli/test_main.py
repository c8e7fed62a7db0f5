"""The command line: one-line errors, settings from the environment, ``celery prom``, and
no broker password anywhere."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from tests.exporter_process import ExporterProcess, exporter_env, running_exporter
from tests.support import REPO, Broker, free_port, load_test_app, private_redis, unique, wait_for

SECRET = "Sentinel-Pa55word-9f3c"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_prom.cli", *args],
        cwd=REPO,
        env=env or exporter_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


URL = f"redis://:{SECRET}@127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "abc"], {}, "Error: invalid value for --port: 'abc' is not an integer"),
        (
            ["--port", "70000"],
            {},
            "Error: invalid value for --port: 70000 is not a port number (1-65535)",
        ),
        (
            [],
            {"CELERY_PROM_PORT": "0"},
            "Error: invalid value for CELERY_PROM_PORT: 0 is not a port number (1-65535)",
        ),
        (
            [],
            {"CELERY_PROM_PORT": "x"},
            "Error: invalid value for CELERY_PROM_PORT: 'x' is not an integer",
        ),
        (
            ["--worker-timeout", "-1"],
            {},
            "Error: invalid value for --worker-timeout: '-1' is not a positive number of seconds",
        ),
        (
            ["--log-level", "loud"],
            {},
            "Error: invalid value for --log-level: 'loud' is not a "
            "log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)",
        ),
        (
            ["--broker-transport-option", "novalue"],
            {},
            "Error: invalid value for --broker-transport-option: 'novalue' is not key=value",
        ),
        (["--bogus"], {}, "Error: No such option '--bogus'. Did you mean '--host'?"),
        (
            ["extra", URL],
            {},
            "Error: Got unexpected extra arguments (extra redis://:**@127.0.0.1:1/0)",
        ),
        (
            ["--max-queues", "0"],
            {},
            "Error: invalid value for --max-queues: 0 is not a positive integer",
        ),
    ],
)
def test_bad_options_are_one_line_exit_2_and_never_show_the_password(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = run_cli("exporter", "--broker-url", URL, *args, env=exporter_env(**env))
    assert (done.returncode, done.stderr, done.stdout) == (2, message + "\n", "")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "nonsense",
            "Error: invalid value for --broker-url: not a broker URL (like redis://host:6379/0)",
        ),
        (
            f"foo://user:{SECRET}@host/0",
            "Error: invalid value for --broker-url: unknown broker "
            "transport 'foo' in foo://user:**@host/0",
        ),
        (
            f"{SECRET}@host",
            "Error: invalid value for --broker-url: not a broker URL (like redis://host:6379/0)",
        ),
    ],
)
def test_a_bad_broker_url_is_reported_masked(url: str, message: str) -> None:
    done = run_cli("exporter", "--broker-url", url)
    assert (done.returncode, done.stderr) == (2, message + "\n")


def test_a_transport_without_its_client_library_is_one_line() -> None:
    done = run_cli("exporter", "--broker-url", f"mongodb://u:{SECRET}@127.0.0.1:1/db")
    assert (done.returncode, done.stderr) == (
        2,
        "Error: the 'mongodb' transport needs a client library that is not installed "
        "(No module named 'pymongo')\n",
    )


def test_no_broker_url_at_all() -> None:
    done = run_cli("exporter")
    assert (done.returncode, done.stderr) == (
        2,
        "Error: no broker URL: pass --broker-url or set CELERY_PROM_BROKER_URL\n",
    )


def test_a_busy_port_is_one_line_naming_it_and_exits_1() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = run_cli(
            "exporter",
            "--broker-url",
            "redis://127.0.0.1:1/0",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
    assert (done.returncode, done.stderr) == (
        1,
        f"Error: port {port} on 127.0.0.1 is already in use\n",
    )


def start(command: list[str], env: dict[str, str], tmp_path: Path, port: int) -> ExporterProcess:
    log = tmp_path / f"cli-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    exporter = ExporterProcess(port, process, log)
    exporter.wait_for_scrape(lambda s: True, what="the endpoint")
    return exporter


@pytest.mark.slow
def test_every_option_can_come_from_the_environment(redis_broker: Broker, tmp_path: Path) -> None:
    port = free_port()
    queue = unique("envq")
    env = exporter_env(
        CELERY_PROM_BROKER_URL=redis_broker.url,
        CELERY_PROM_HOST="127.0.0.1",
        CELERY_PROM_PORT=str(port),
        CELERY_PROM_QUEUES=f"{queue},other",
        CELERY_PROM_BROKER_TRANSPORT_OPTION=json.dumps(redis_broker.transport_options),
    )
    app = load_test_app(redis_broker, queue)
    for _ in range(2):
        app.send_task("demo.waiting", queue=queue)
    exporter = start([sys.executable, "-m", "celery_prom.cli", "exporter"], env, tmp_path, port)
    try:
        exporter.wait_for_scrape(
            lambda s: (
                s.value("celery_queue_length", queue_name=queue) == 2
                and s.value("celery_queue_length", queue_name="other") == 0
            ),
            what="the queues from the environment",
        )
    finally:
        exporter.stop()


@pytest.mark.slow
def test_celery_prom_uses_the_app_broker_transport_options_and_queues(
    redis_broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    queue = unique("appq")
    app = load_test_app(redis_broker, queue)
    for _ in range(3):
        app.send_task("demo.waiting", queue=queue)
    env = exporter_env(redis_broker, CPTEST_QUEUE=queue, CPTEST_INSTRUMENTATION="none")
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "cptest_tasks",
        "prom",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    exporter = start(command, env, tmp_path, port)
    try:
        exporter.wait_for_scrape(
            lambda s: s.value("celery_queue_length", queue_name=queue) == 3,
            what="the app's queue with its 3 messages",
        )
    finally:
        exporter.stop()


def test_celery_prom_bad_option_is_one_line(redis_broker: Broker) -> None:
    env = exporter_env(redis_broker, CPTEST_INSTRUMENTATION="none")
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cptest_tasks", "prom", "--port", "nope"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (
        2,
        "Error: invalid value for --port: 'nope' is not an integer\n",
    )


@pytest.mark.slow
def test_a_rejected_password_appears_nowhere(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--requirepass", "the-right-one") as server:
        port = free_port()
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        command = [
            sys.executable,
            "-m",
            "celery_prom.cli",
            "exporter",
            "--broker-url",
            url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "DEBUG",
            "-Q",
            "jobs",
        ]
        exporter = start(command, exporter_env(), tmp_path, port)
        try:
            wait_for(
                lambda: exporter.output().count("retrying in") >= 2,
                what="two failed connection attempts logged",
            )
            scraped = exporter.scrape()
            assert scraped is not None
            assert scraped.value("celery_prom_broker_up") == 0
            status, health = exporter.health()
            assert status == 503
            assert health["checks"]["broker_url"] == f"redis://:**@127.0.0.1:{server.port}/0"
            # The cause, not a scrape's timeout meeting the same broker.
            assert health["checks"]["broker_error"].startswith("AuthenticationError: ")
            everything = exporter.output() + scraped.text + json.dumps(health)
            assert SECRET not in everything
            assert "**@127.0.0.1" in exporter.output()
        finally:
            exporter.stop()


def http_status(port: int, headers: dict[str, str]) -> int | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_the_exporter_requires_basic_auth_from_its_web_config(
    redis_broker: Broker, tmp_path: Path
) -> None:
    hashed = bcrypt.hashpw(b"scrape-me", bcrypt.gensalt(rounds=4)).decode()
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    credentials = base64.b64encode(b"prometheus:scrape-me").decode()

    with running_exporter(
        redis_broker.url,
        tmp_path,
        "--web-config",
        str(web_config),
        transport_options=redis_broker.transport_options,
        wait=False,
    ) as exporter:
        wait_for(lambda: http_status(exporter.port, {}) == 401, what="a 401 without credentials")
        assert http_status(exporter.port, {"Authorization": f"Basic {credentials}"}) == 200


def test_a_bad_web_config_is_one_line(tmp_path: Path) -> None:
    web_config = tmp_path / "web.yml"
    web_config.write_text("tls_server_config:\n  cert_file: nope.pem\n")

    done = run_cli("exporter", "--broker-url", URL, "--web-config", str(web_config))

    assert (done.returncode, done.stdout, done.stderr) == (
        2,
        "",
        f"Error: web config {web_config}: tls_server_config needs cert_file and key_file\n",
    )
