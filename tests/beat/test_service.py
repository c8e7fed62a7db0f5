"""``celery beat`` with ``install(app)``: real beat processes, a real Redis broker, the
endpoint scraped over HTTP. What beat counts is what the broker received."""

from __future__ import annotations

import base64
import datetime
import json
import socket
import time
import urllib.error
from pathlib import Path

import bcrypt
import pytest
from celery import Celery
from celery.beat import PersistentScheduler
from celery.schedules import crontab

from tests.support import (
    Broker,
    Scrape,
    beat_command,
    http_get,
    private_redis,
    run_refused,
    running_beat,
    unique,
    wait_for,
    wait_for_sends_to_match_the_broker,
)

SENT = "celery_beat_tasks_sent_total"
ERRORS = "celery_beat_send_errors_total"
TASK = "cptest_tasks.noop"
UTC = datetime.timezone.utc


def sent(scrape: Scrape, entry: str) -> float:
    return scrape.value(SENT, entry=entry, name=TASK) or 0.0


@pytest.mark.slow
def test_an_entry_every_second_is_counted_as_the_broker_received_it(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    with running_beat(own_redis_broker, tmp_path, {"every-second": 1.0}) as beat:
        first = beat.wait_for_scrape(lambda s: sent(s, "every-second") >= 1, what="a send")
        started = time.monotonic()
        beat.wait_for_scrape(lambda s: sent(s, "every-second") >= 5, what="five sends")
        result = wait_for_sends_to_match_the_broker(beat, own_redis_broker)
        elapsed = time.monotonic() - started
        health = json.loads(http_get(f"http://127.0.0.1:{beat.port}/health"))

    count = sent(result, "every-second")
    # One send a second, give or take the scrapes' timing.
    assert abs((count - sent(first, "every-second")) - elapsed) <= 2
    assert result.value(ERRORS, entry="every-second", name=TASK) == 0
    assert result.value("celery_beat_info", scheduler="celery.beat.PersistentScheduler") == 1
    assert result.value("celery_beat_entries") == 1
    # Each sent close to its due time (within milliseconds, unless the machine is busy).
    assert result.value("celery_beat_lateness_seconds_count", entry="every-second") == count
    assert result.value("celery_beat_lateness_seconds_bucket", entry="every-second", le="5.0") == (
        count
    )
    tick = result.value("celery_beat_tick_timestamp_seconds")
    last_run = result.value("celery_beat_last_run_timestamp_seconds", entry="every-second")
    next_run = result.value("celery_beat_next_run_timestamp_seconds", entry="every-second")
    assert None not in (tick, last_run, next_run)
    assert last_run <= tick < next_run
    # A second after the last run (beat plans from when it finished sending, 10 ms early).
    assert next_run == pytest.approx(last_run + 1.0, abs=0.25)
    # What beat published shows in its own process's producer count too.
    assert result.value("celery_task_sent_total", name=TASK, queue_name=beat.queue) == count
    assert health == {
        "healthy": True,
        "checks": {"scheduler": "celery.beat.PersistentScheduler"},
    }


def seed_last_run(
    schedule_file: Path, entry: str, minute: str, last_run: datetime.datetime
) -> None:
    """Write a schedule file in which ``entry`` last ran at ``last_run``, as beat would."""
    app = Celery("cptest-seed", set_as_current=False)
    app.conf.update(timezone="UTC", result_expires=None)
    app.conf.beat_schedule = {entry: {"task": TASK, "schedule": crontab(minute=minute)}}
    scheduler = PersistentScheduler(app, schedule_filename=str(schedule_file))
    scheduler.schedule[entry] = scheduler.schedule[entry]._next_instance(last_run)
    scheduler.close()
    app.close()


def test_a_crontab_entry_missed_while_beat_was_down_is_sent_late_by_as_long(
    own_redis_broker: Broker, tmp_path: Path
) -> None:
    # An hourly crontab that was due two minutes ago and last ran an hour before that.
    now = datetime.datetime.now(UTC).replace(second=0, microsecond=0)
    due = now - datetime.timedelta(minutes=2)
    seed_last_run(
        tmp_path / "schedule", "hourly", str(due.minute), due - datetime.timedelta(hours=1)
    )

    with running_beat(
        own_redis_broker,
        tmp_path,
        {"hourly": str(due.minute)},
        schedule_file=tmp_path / "schedule",
    ) as beat:
        result = beat.wait_for_scrape(lambda s: sent(s, "hourly") == 1, what="the missed run")
        wait_for_sends_to_match_the_broker(beat, own_redis_broker)

    last_run = result.value("celery_beat_last_run_timestamp_seconds", entry="hourly")
    assert last_run is not None
    lateness = result.value("celery_beat_lateness_seconds_sum", entry="hourly")
    assert lateness == pytest.approx(last_run - due.timestamp(), abs=0.5)
    assert result.value("celery_beat_lateness_seconds_bucket", entry="hourly", le="60.0") == 0
    assert result.value("celery_beat_lateness_seconds_bucket", entry="hourly", le="300.0") == 1
    # Next due at the same minute of the next hour (beat plans to wake 10 ms early).
    next_run = result.value("celery_beat_next_run_timestamp_seconds", entry="hourly")
    expected_next = (due + datetime.timedelta(hours=1)).timestamp()
    while expected_next < last_run:
        expected_next += 3600
    assert next_run == pytest.approx(expected_next, abs=0.1)


@pytest.mark.slow
def test_beat_and_its_endpoint_outlive_a_broker_that_dies_and_sending_resumes(
    tmp_path: Path,
) -> None:
    with (
        private_redis(tmp_path) as redis_server,
        running_beat(redis_server.broker, tmp_path, {"every-second": 1.0}) as beat,
    ):
        beat.wait_for_scrape(lambda s: sent(s, "every-second") >= 2, what="sends")

        redis_server.stop()
        during = beat.wait_for_scrape(
            lambda s: (s.value(ERRORS, entry="every-second", name=TASK) or 0) >= 2,
            what="failed sends to be counted",
        )
        before_restart = beat.scrape()
        assert sent(before_restart, "every-second") == sent(during, "every-second")

        redis_server.start()
        already = sent(before_restart, "every-second")
        beat.wait_for_scrape(lambda s: sent(s, "every-second") >= already + 2, what="resumed")
        resumed = wait_for_sends_to_match_the_broker(beat, redis_server.broker, already)
        beat.assert_alive()

    assert resumed.value(ERRORS, entry="every-second", name=TASK) >= 2
    assert resumed.value("celery_prom_errors_total", component="beat") is None


def test_the_endpoint_takes_the_web_config_option(own_redis_broker: Broker, tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    config.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    credentials = base64.b64encode(b"prometheus:s3cret").decode()

    with running_beat(
        own_redis_broker,
        tmp_path,
        {"every-second": 1.0},
        extra_args=("--prom-web-config", str(config)),
        wait=False,
    ) as beat:
        url = f"http://127.0.0.1:{beat.port}/metrics"
        text = wait_for(
            lambda: _get_or_none(url, {"Authorization": f"Basic {credentials}"}) or None,
            what="an authenticated scrape",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            http_get(url)

    assert refused.value.code == 401
    assert "celery_beat_info" in text


def _get_or_none(url: str, headers: dict[str, str]) -> str | None:
    try:
        return http_get(url, headers)
    except OSError:
        return None


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("--prom-port", "http"),
            {},
            "Invalid value for '--prom-port': 'http' is not a port or a range of ports like "
            "9808-9827.",
        ),
        (
            (),
            {"CELERY_PROM_HOST": "no host!"},
            "Invalid value for 'CELERY_PROM_HOST': 'no host!' is not a host name or IP address.",
        ),
        (
            ("--prom-web-config", "/nonexistent/web.yml"),
            {},
            "web config /nonexistent/web.yml: No such file or directory",
        ),
    ],
)
def test_a_bad_option_stops_beat_with_one_line(
    args: tuple[str, ...], env: dict[str, str], message: str, redis_broker: Broker, tmp_path: Path
) -> None:
    command = beat_command(tmp_path / "schedule", *args, loglevel="WARNING")
    result = run_refused(redis_broker, command, unique("q"), env)

    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [f"Error: celery-prom: {message}"],
    )


def test_a_busy_port_stops_beat_with_one_line(redis_broker: Broker, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        command = beat_command(
            tmp_path / "schedule",
            *("--prom-port", str(port), "--prom-host", "127.0.0.1"),
            loglevel="WARNING",
        )
        result = run_refused(redis_broker, command, unique("q"))

    assert (result.returncode, result.stderr.splitlines()) == (
        1,
        [f"Error: celery-prom: port {port} on 127.0.0.1 is already in use"],
    )
