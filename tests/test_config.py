"""Settings: precedence and validation with one-line messages."""

from __future__ import annotations

from typing import Any

import pytest

from celery_prom.config import ConfigError, Source, WorkerSettings, parse_buckets, parse_host
from celery_prom.metrics import DEFAULT_RUNTIME_BUCKETS
from celery_prom.store import LabelLimits


def worker(
    cli: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    conf: dict[str, Any] | None = None,
) -> WorkerSettings:
    return WorkerSettings.resolve(
        Source(cli=cli or {}, env=env or {}, conf=conf or {}, cli_prefix="prom_")
    )


def test_defaults() -> None:
    settings = worker()

    assert (settings.port, settings.host, settings.enabled) == (9808, "0.0.0.0", True)
    assert settings.runtime_buckets == DEFAULT_RUNTIME_BUCKETS
    assert settings.limits == LabelLimits()


def test_command_line_beats_environment_beats_app_conf() -> None:
    conf = {"celery_prom_port": 1000, "celery_prom_host": "10.0.0.1"}
    env = {"CELERY_PROM_PORT": "2000"}

    assert worker(conf=conf).port == 1000
    assert worker(env=env, conf=conf).port == 2000
    assert worker(cli={"prom_port": "3000"}, env=env, conf=conf).port == 3000
    assert worker(cli={"prom_port": None}, env=env, conf=conf).host == "10.0.0.1"


def test_port_zero_turns_metrics_off() -> None:
    assert worker(env={"CELERY_PROM_PORT": "0"}).enabled is False


def test_an_empty_environment_variable_counts_as_unset() -> None:
    assert worker(env={"CELERY_PROM_PORT": ""}, conf={"celery_prom_port": 1234}).port == 1234


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"cli": {"prom_port": "abc"}}, "invalid value for --prom-port: 'abc' is not an integer"),
        (
            {"env": {"CELERY_PROM_PORT": "70000"}},
            "invalid value for CELERY_PROM_PORT: 70000 is not a port number (0-65535, 0 disables)",
        ),
        (
            {"conf": {"celery_prom_port": True}},
            "invalid value for app.conf.celery_prom_port: True is not an integer",
        ),
        (
            {"env": {"CELERY_PROM_HOST": "not a host!"}},
            "invalid value for CELERY_PROM_HOST: 'not a host!' is not a host name or IP address",
        ),
        (
            {"env": {"CELERY_PROM_RUNTIME_BUCKETS": "1,0.5"}},
            "invalid value for CELERY_PROM_RUNTIME_BUCKETS: bucket bounds must increase "
            "strictly: '1,0.5'",
        ),
        (
            {"env": {"CELERY_PROM_MAX_TASK_NAMES": "0"}},
            "invalid value for CELERY_PROM_MAX_TASK_NAMES: 0 is not a positive integer",
        ),
    ],
)
def test_bad_values_name_their_source_in_one_line(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        worker(**source)

    assert str(error.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.1,1,10", (0.1, 1.0, 10.0)),
        ("0.5, 5, +Inf", (0.5, 5.0)),
        ([1, 2], (1.0, 2.0)),
    ],
)
def test_buckets_parse_from_text_or_lists(value: Any, expected: tuple[float, ...]) -> None:
    assert parse_buckets(value) == expected


@pytest.mark.parametrize("value", ["", "nan", "a,b", "inf", 5])
def test_unusable_buckets_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match=r"bucket|number"):
        parse_buckets(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        ("[::1]", "::1"),
        ("worker-1.internal", "worker-1.internal"),
    ],
)
def test_hosts(value: str, expected: str) -> None:
    assert parse_host(value) == expected
