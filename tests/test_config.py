"""Exporter settings: precedence, merging with an app's own, validation, masking."""

from __future__ import annotations

import logging

import pytest

from celery_prom.config import (
    ConfigError,
    ExporterSettings,
    MaskingFormatter,
    Source,
    mask_secrets,
    parse_transport_options,
)


def resolve(
    cli: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
    conf: dict[str, object] | None = None,
    **defaults: object,
) -> ExporterSettings:
    return ExporterSettings.resolve(
        Source(cli=cli or {}, env=env or {}, conf=conf or {}), **defaults
    )  # type: ignore[arg-type]


def test_defaults() -> None:
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


def test_command_line_beats_environment_beats_app_conf() -> None:
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
            {"CELERY_PROM_RUNTIME_BUCKETS": "2,1"},
            "invalid value for CELERY_PROM_RUNTIME_BUCKETS: bucket bounds must increase strictly: "
            "'2,1'",
        ),
    ],
)
def test_bad_values_name_their_source(env: dict[str, str], message: str) -> None:
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
