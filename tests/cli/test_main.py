"""The command line: one-line errors, settings from the environment, ``celery prom``, and
no broker password anywhere."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from celery import Celery
from celery.bin.base import CLIContext

from celery_prom.cli.main import exporter, prom
from tests.exporter_process import ExporterProcess, exporter_env, running_exporter
from tests.support import (
    REPO,
    Broker,
    exporter_command,
    free_port,
    load_test_app,
    private_redis,
    unique,
    wait_for,
)

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


def run_celery(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cptest_tasks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


URL = f"redis://:{SECRET}@127.0.0.1:1/0"
MASKED = "redis://:**@127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "abc"], {}, "Invalid value for '--port': 'abc' is not a valid integer range."),
        (
            ["--port", "70000"],
            {},
            "Invalid value for '--port': 70000 is not in the range 1<=x<=65535.",
        ),
        (
            [],
            {"CELERY_PROM_PORT": "0"},
            "Invalid value for 'CELERY_PROM_PORT': 0 is not in the range 1<=x<=65535.",
        ),
        (
            [],
            {"CELERY_PROM_PORT": "x"},
            "Invalid value for 'CELERY_PROM_PORT': 'x' is not a valid integer range.",
        ),
        (
            ["--worker-timeout", "-1"],
            {},
            "Invalid value for '--worker-timeout': -1.0 is not in the range x>0.",
        ),
        (
            ["--broker-timeout", "nan"],
            {},
            "Invalid value for '--broker-timeout': 'nan' is not a finite number of seconds.",
        ),
        (
            ["--log-level", "loud"],
            {},
            "Invalid value for '--log-level': 'loud' is not one of 'debug', 'info', 'warning', "
            "'error', 'critical'.",
        ),
        (
            ["--broker-transport-option", "novalue"],
            {},
            "Invalid value for '--broker-transport-option': 'novalue' is not key=value.",
        ),
        (
            [],
            {"CELERY_PROM_BROKER_TRANSPORT_OPTION": "{bad"},
            "Invalid value for 'CELERY_PROM_BROKER_TRANSPORT_OPTION': transport options are "
            "not a valid JSON object.",
        ),
        (["--bogus"], {}, "No such option '--bogus'. Did you mean '--host'?"),
        (["extra", URL], {}, f"Got unexpected extra arguments (extra {MASKED})"),
        (
            ["--max-queues", "0"],
            {},
            "Invalid value for '--max-queues': 0 is not in the range x>=1.",
        ),
        (
            ["--port", URL],
            {},
            f"Invalid value for '--port': '{MASKED}' is not a valid integer range.",
        ),
        (
            [],
            {"CELERY_PROM_RUNTIME_BUCKETS": URL},
            f"Invalid value for 'CELERY_PROM_RUNTIME_BUCKETS': '{MASKED}' is not a list of "
            "numbers.",
        ),
    ],
)
def test_bad_options_are_one_line_exit_2_and_never_show_the_password(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = run_cli("exporter", "--broker-url", URL, *args, env=exporter_env(**env))
    assert (done.returncode, done.stderr, done.stdout) == (2, f"Error: {message}\n", "")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "not a broker URL (like redis://host:6379/0)."),
        (
            f"foo://user:{SECRET}@host/0",
            "unknown broker transport 'foo' in foo://user:**@host/0.",
        ),
        (f"{SECRET}@host", "not a broker URL (like redis://host:6379/0)."),
    ],
)
def test_a_bad_broker_url_is_reported_masked(url: str, message: str) -> None:
    on_the_command_line = run_cli("exporter", "--broker-url", url)
    in_the_environment = run_cli("exporter", env=exporter_env(CELERY_PROM_BROKER_URL=url))

    assert (on_the_command_line.returncode, on_the_command_line.stderr) == (
        2,
        f"Error: Invalid value for '--broker-url': {message}\n",
    )
    assert (in_the_environment.returncode, in_the_environment.stderr) == (
        2,
        f"Error: Invalid value for 'CELERY_PROM_BROKER_URL': {message}\n",
    )


def help_text(done: subprocess.CompletedProcess[str]) -> str:
    """The help as one line: click wraps it to the terminal's width."""
    assert (done.returncode, done.stderr) == (0, "")
    return " ".join(done.stdout.split())


def test_help_shows_the_types_defaults_and_environment_variables() -> None:
    text = help_text(run_cli("exporter", "--help"))

    for entry in [
        "--broker-url URL Broker URL, e.g. redis://host:6379/0 (celery prom: the app's). "
        "[env var: CELERY_PROM_BROKER_URL]",
        "--host HOST Address to listen on. [env var: CELERY_PROM_HOST; default: 0.0.0.0]",
        "--port INTEGER RANGE Port of /metrics. "
        "[env var: CELERY_PROM_PORT; default: 9808; 1<=x<=65535]",
        "-Q, --queues NAMES",
        "--broker-transport-option KEY=VALUE",
        "--worker-timeout FLOAT RANGE Seconds without a heartbeat before a worker is down. "
        "[env var: CELERY_PROM_WORKER_TIMEOUT; default: 30.0; x>0]",
        "[env var: CELERY_PROM_EVENT_EXCHANGE; default: celeryev]",
        "--web-config FILE",
        "--log-level [debug|info|warning|error|critical] "
        "[env var: CELERY_PROM_LOG_LEVEL; default: INFO]",
        "--runtime-buckets FLOAT LIST",
        "default: 0.005, 0.01, 0.025,",
        "--max-queues INTEGER RANGE Cap on distinct queue names (then `_other`). "
        "[env var: CELERY_PROM_MAX_QUEUES; default: 1000; x>=1]",
    ]:
        assert entry in text
    assert "TEXT" not in text.replace("--event-exchange TEXT", "")


def test_celery_prom_help_shows_the_app_settings_as_defaults_but_no_broker_url(
    redis_broker: Broker,
) -> None:
    conf = {
        "celery_prom_port": 7000,
        "event_exchange": "app_events",
        "celery_prom_broker_url": f"redis://:{SECRET}@127.0.0.1:1/0",
    }
    env = exporter_env(redis_broker, CPTEST_INSTRUMENTATION="none", CPTEST_CONF=json.dumps(conf))

    text = help_text(run_celery("prom", "--help", env=env))

    assert "[env var: CELERY_PROM_PORT; default: 7000; 1<=x<=65535]" in text
    assert "[env var: CELERY_PROM_EVENT_EXCHANGE; default: app_events]" in text
    assert "[env var: CELERY_PROM_BROKER_URL]" in text
    assert SECRET not in text


def test_options_come_from_the_command_line_then_the_environment_then_app_conf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in os.environ if name.startswith("CELERY_PROM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CELERY_PROM_PORT", "2222")
    monkeypatch.setenv("CELERY_PROM_WORKER_TIMEOUT", "5")
    app = Celery("cptest_precedence", set_as_current=False)
    app.conf.update(
        celery_prom_port=3333, celery_prom_worker_timeout=7, celery_prom_purge_offline_after=60
    )

    options = prom.make_context(
        "prom", ["--port", "1111"], obj=CLIContext(app, no_color=True, workdir=None)
    ).params
    without_app = exporter.make_context("exporter", []).params

    assert (
        options["port"],
        options["worker_timeout"],
        options["purge_offline_after"],
        options["broker_timeout"],
    ) == (1111, 5.0, 60.0, 2.0)
    assert (without_app["port"], without_app["purge_offline_after"]) == (2222, 600.0)


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


@pytest.mark.parametrize(
    ("args", "env", "conf", "message"),
    [
        (["--port", "nope"], {}, {}, "'--port': 'nope'"),
        ([], {"CELERY_PROM_PORT": "env"}, {}, "'CELERY_PROM_PORT': 'env'"),
        ([], {}, {"celery_prom_port": "conf"}, "'app.conf.celery_prom_port': 'conf'"),
        # A bad value names the source that won: each beats the ones after it.
        (
            ["--port", "nope"],
            {"CELERY_PROM_PORT": "env"},
            {"celery_prom_port": "conf"},
            "'--port': 'nope'",
        ),
        (
            [],
            {"CELERY_PROM_PORT": "env"},
            {"celery_prom_port": "conf"},
            "'CELERY_PROM_PORT': 'env'",
        ),
    ],
)
def test_celery_prom_bad_option_is_one_line_naming_its_source(
    redis_broker: Broker,
    args: list[str],
    env: dict[str, str],
    conf: dict[str, object],
    message: str,
) -> None:
    done = run_celery(
        "prom",
        *args,
        env=exporter_env(
            redis_broker, CPTEST_INSTRUMENTATION="none", CPTEST_CONF=json.dumps(conf), **env
        ),
    )

    assert (done.returncode, done.stdout, done.stderr) == (
        2,
        "",
        f"Error: Invalid value for {message} is not a valid integer range.\n",
    )


def test_a_broker_url_from_app_conf_is_masked_in_its_error(redis_broker: Broker) -> None:
    conf = {"celery_prom_broker_url": f"foo://user:{SECRET}@host/0"}
    env = exporter_env(redis_broker, CPTEST_INSTRUMENTATION="none", CPTEST_CONF=json.dumps(conf))

    done = run_celery("prom", env=env)

    assert (done.returncode, done.stderr) == (
        2,
        "Error: Invalid value for 'app.conf.celery_prom_broker_url': unknown broker transport "
        "'foo' in foo://user:**@host/0.\n",
    )


@pytest.mark.slow
def test_a_rejected_password_appears_nowhere(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--requirepass", "the-right-one") as server:
        port = free_port()
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        command = exporter_command(url, port, "--log-level", "DEBUG", "-Q", "jobs")
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
