"""Settings: precedence, validation with one-line messages, merging with an app's own,
masking of secrets — for the worker and for the exporter."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from celery_prom.config import (
    ConfigError,
    ExporterSettings,
    MaskingFormatter,
    Source,
    WorkerSettings,
    mask_secrets,
    parse_buckets,
    parse_host,
    parse_transport_options,
)
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


def test_worker_defaults() -> None:
    settings = worker()

    assert (settings.port, settings.host, settings.enabled) == (9808, "0.0.0.0", True)
    assert settings.runtime_buckets == DEFAULT_RUNTIME_BUCKETS
    assert settings.limits == LabelLimits()


def test_worker_command_line_beats_environment_beats_app_conf() -> None:
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
            "strictly: 1.0, 0.5",
        ),
        (
            {"env": {"CELERY_PROM_MAX_TASK_NAMES": "0"}},
            "invalid value for CELERY_PROM_MAX_TASK_NAMES: 0 is not a positive integer",
        ),
    ],
)
def test_bad_worker_values_name_their_source_in_one_line(
    source: dict[str, Any], message: str
) -> None:
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


def resolve(
    cli: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
    conf: dict[str, object] | None = None,
    **defaults: object,
) -> ExporterSettings:
    return ExporterSettings.resolve(
        Source(cli=cli or {}, env=env or {}, conf=conf or {}), **defaults
    )  # type: ignore[arg-type]


def test_exporter_defaults() -> None:
    settings = resolve({"broker_url": "redis://localhost:6379/0"})
    assert (
        settings.port,
        settings.host,
        settings.queues,
        dict(settings.transport_options),
        settings.worker_timeout,
        settings.purge_offline_after,
        settings.log_level,
        settings.event_exchange,
    ) == (9808, "0.0.0.0", (), {}, 30.0, 600.0, "INFO", "celeryev")


def test_exporter_command_line_beats_environment_beats_app_conf() -> None:
    settings = resolve(
        cli={"port": "1111"},
        env={
            "CELERY_PROM_PORT": "2222",
            "CELERY_PROM_WORKER_TIMEOUT": "5",
            "CELERY_PROM_BROKER_URL": "amqp://guest:guest@localhost//",
        },
        conf={
            "celery_prom_port": 3333,
            "celery_prom_worker_timeout": 7,
            "celery_prom_purge_offline_after": 60,
        },
    )
    assert (
        settings.port,
        settings.worker_timeout,
        settings.purge_offline_after,
        settings.broker_url,
    ) == (1111, 5.0, 60.0, "amqp://guest:guest@localhost//")


def test_queues_and_transport_options_add_to_the_app_ones() -> None:
    settings = resolve(
        cli={
            "queues": ("a,b", "c"),
            "broker_transport_option": ("visibility_timeout=10", "priority_steps=[0,5]"),
        },
        default_broker_url="redis://h/0",
        default_queues=["celery", "a"],
        default_transport_options={"visibility_timeout": 99, "global_keyprefix": "p:"},
    )
    assert settings.queues == ("celery", "a", "b", "c")
    assert dict(settings.transport_options) == {
        "visibility_timeout": 10,
        "global_keyprefix": "p:",
        "priority_steps": [0, 5],
    }


@pytest.mark.parametrize(
    ("text", "options"),
    [
        (
            "global_keyprefix=app:;visibility_timeout=5",
            {"global_keyprefix": "app:", "visibility_timeout": 5},
        ),
        ('{"max_retries": 3, "flag": true}', {"max_retries": 3, "flag": True}),
        ('name="123"', {"name": "123"}),
    ],
)
def test_transport_options_from_text(text: str, options: dict[str, object]) -> None:
    assert parse_transport_options(text) == options


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"CELERY_PROM_PURGE_OFFLINE_AFTER": "soon"},
            "invalid value for CELERY_PROM_PURGE_OFFLINE_AFTER: 'soon' is not a number of seconds",
        ),
        (
            {"CELERY_PROM_BROKER_TIMEOUT": "0"},
            "invalid value for CELERY_PROM_BROKER_TIMEOUT: '0' is not a positive number of seconds",
        ),
        (
            {"CELERY_PROM_BROKER_TRANSPORT_OPTION": "{bad"},
            "invalid value for CELERY_PROM_BROKER_TRANSPORT_OPTION: transport options are not a "
            "valid JSON object",
        ),
        (
            {"CELERY_PROM_PORT": "0"},
            "invalid value for CELERY_PROM_PORT: 0 is not a port number (1-65535)",
        ),
        (
            {"CELERY_PROM_RUNTIME_BUCKETS": "2,1"},
            "invalid value for CELERY_PROM_RUNTIME_BUCKETS: bucket bounds must increase strictly: "
            "2.0, 1.0",
        ),
    ],
)
def test_bad_exporter_values_name_their_source(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve({"broker_url": "redis://h/0"}, env=env)
    assert str(error.value) == message


def test_the_broker_url_is_required() -> None:
    with pytest.raises(ConfigError, match="no broker URL"):
        resolve()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@h:6379/0", "redis://:**@h:6379/0"),
        ("amqp://user:pw@h//vhost", "amqp://user:**@h//vhost"),
        (
            "Error connecting to 'rediss://u:p@ss@host:1/0': refused",
            "Error connecting to 'rediss://u:**@host:1/0': refused",
        ),
        (
            "sentinel://:a@h1:26379;sentinel://:b@h2:26379",
            "sentinel://:**@h1:26379;sentinel://:**@h2:26379",
        ),
        ("redis://:s3cr,et@h/0", "redis://:**@h/0"),
        ("amqp://u:p1@h1;amqp://u:p,2@h2//", "amqp://u:**@h1;amqp://u:**@h2//"),
        ("redis://h:6379/0 has no password", "redis://h:6379/0 has no password"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_log_records_and_their_tracebacks_are_masked() -> None:
    formatter = MaskingFormatter("%(message)s")
    try:
        raise ConnectionError("cannot reach redis://:hunter2@db:6379/0")
    except ConnectionError:
        record = logging.LogRecord(
            "x",
            logging.ERROR,
            __file__,
            1,
            "using %s",
            ("amqp://u:hunter2@mq//",),
            exc_info=__import__("sys").exc_info(),
        )
    text = formatter.format(record)
    assert "hunter2" not in text
    assert "amqp://u:**@mq//" in text
    assert "redis://:**@db:6379/0" in text
