"""Settings: precedence, click types with one-line messages naming the source, merging
with an app's own, masking of secrets — for the worker and for the exporter."""

from __future__ import annotations

import logging
import os
import ssl
import sys
from typing import Any

import click
import pytest
from celery import Celery

from celery_prom.config import (
    Address,
    AdvertisedAddress,
    Buckets,
    ConfigError,
    ExporterSettings,
    Host,
    HostPort,
    JobName,
    MaskingFormatter,
    PortRange,
    Ports,
    QueueNames,
    SslOption,
    TransportOption,
    WorkerSettings,
    exporter_options,
    mask_secrets,
    resolve,
)
from celery_prom.metrics import DEFAULT_RUNTIME_BUCKETS, LabelLimits


@pytest.fixture(autouse=True)
def no_celery_prom_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("CELERY_PROM_")]:
        monkeypatch.delenv(name)


def app_with(**conf: Any) -> Celery:
    app = Celery("cptest_config", set_as_current=False)
    app.conf.update(conf)
    return app


def worker(cli: dict[str, Any] | None = None, **conf: Any) -> WorkerSettings:
    return WorkerSettings.resolve(app_with(**conf), cli or {})


def test_worker_defaults() -> None:
    settings = worker()

    assert (
        settings.ports,
        settings.host,
        settings.advertise,
        settings.web_config,
        settings.enabled,
    ) == (Ports(9808, 9808), "0.0.0.0", None, None, True)
    assert settings.runtime_buckets == DEFAULT_RUNTIME_BUCKETS
    assert settings.limits == LabelLimits()


def test_worker_command_line_beats_environment_beats_app_conf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = {"celery_prom_port": 1000, "celery_prom_host": "10.0.0.1"}

    assert worker(**conf).ports == Ports(1000, 1000)
    monkeypatch.setenv("CELERY_PROM_PORT", "2000-2009")
    assert worker(**conf).ports == Ports(2000, 2009)
    assert worker({"prom_port": Ports(3000, 3000)}, **conf).ports == Ports(3000, 3000)
    assert worker({"prom_port": None}, **conf).host == "10.0.0.1"


def test_the_advertised_address_comes_from_the_environment_or_app_conf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert worker(celery_prom_advertise="w1.internal").advertise == HostPort("w1.internal")
    monkeypatch.setenv("CELERY_PROM_ADVERTISE", "[fd00::7]:9900")
    assert worker(celery_prom_advertise="w1.internal").advertise == HostPort("fd00::7", 9900)


def test_worker_buckets_and_caps_come_from_the_environment_and_app_conf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_PROM_RUNTIME_BUCKETS", "0.5,2")
    monkeypatch.setenv("CELERY_PROM_MAX_QUEUES", "7")

    settings = worker(
        celery_prom_runtime_buckets=[9, 10],
        celery_prom_queue_wait_buckets=[1, 60],
        celery_prom_max_task_names=3,
    )

    assert (settings.runtime_buckets, settings.queue_wait_buckets) == ((0.5, 2.0), (1.0, 60.0))
    assert settings.limits == LabelLimits(task_names=3, queues=7)


def test_port_zero_turns_metrics_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_PROM_PORT", "0")

    assert worker().enabled is False


def test_an_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_PROM_PORT", "")

    assert worker(celery_prom_port=1234).ports == Ports(1234, 1234)


@pytest.mark.parametrize(
    ("env", "conf", "message"),
    [
        (
            {"CELERY_PROM_PORT": "70000"},
            {},
            "Invalid value for 'CELERY_PROM_PORT': 70000 is not in the range 0<=x<=65535.",
        ),
        (
            {},
            {"celery_prom_port": "abc"},
            "Invalid value for 'app.conf.celery_prom_port': 'abc' is not a port or a range of "
            "ports like 9808-9827.",
        ),
        (
            {"CELERY_PROM_PORT": "9827-9808"},
            {},
            "Invalid value for 'CELERY_PROM_PORT': '9827-9808' is not a range of ports: 9827 is "
            "above 9808.",
        ),
        (
            {},
            {"celery_prom_advertise": "w1:http"},
            "Invalid value for 'app.conf.celery_prom_advertise': 'w1:http' is not host[:port].",
        ),
        (
            {"CELERY_PROM_HOST": "not a host!"},
            {},
            "Invalid value for 'CELERY_PROM_HOST': 'not a host!' is not a host name or IP address.",
        ),
        (
            {"CELERY_PROM_RUNTIME_BUCKETS": "1,0.5"},
            {},
            "Invalid value for 'CELERY_PROM_RUNTIME_BUCKETS': bucket bounds must increase "
            "strictly: 1, 0.5.",
        ),
        (
            {},
            {"celery_prom_max_task_names": 0},
            "Invalid value for 'app.conf.celery_prom_max_task_names': 0 is not in the range x>=1.",
        ),
        (
            {"CELERY_PROM_MAX_EXCEPTIONS": "redis://:hunter2@db/0"},
            {},
            "Invalid value for 'CELERY_PROM_MAX_EXCEPTIONS': 'redis://:**@db/0' is not a valid "
            "integer range.",
        ),
    ],
)
def test_bad_worker_values_name_their_source_in_one_masked_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], conf: dict[str, Any], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as error:
        worker(**conf)

    assert str(error.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.1,1,10", (0.1, 1.0, 10.0)),
        ("0.5, 5, +Inf", (0.5, 5.0)),
        ([1, 2], (1.0, 2.0)),
    ],
)
def test_buckets_convert_from_text_or_lists(value: Any, expected: tuple[float, ...]) -> None:
    assert Buckets().convert(value, None, None) == expected


@pytest.mark.parametrize("value", ["", "nan", "a,b", "inf", 5, "2,1"])
def test_unusable_buckets_are_refused(value: Any) -> None:
    with pytest.raises(click.BadParameter, match=r"bucket|number"):
        Buckets().convert(value, None, None)


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
    assert Host().convert(value, None, None) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("exporter.internal:9100", "exporter.internal:9100"),
        ("10.0.0.7:9808", "10.0.0.7:9808"),
        ("[fd00::7]:9808", "[fd00::7]:9808"),
    ],
)
def test_addresses(value: str, expected: str) -> None:
    assert Address().convert(value, None, None) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (9808, Ports(9808, 9808)),
        ("0", Ports(0, 0)),
        ("9808-9827", Ports(9808, 9827)),
        (" 9808 - 9808 ", Ports(9808, 9808)),
        ("1-65535", Ports(1, 65535)),
    ],
)
def test_ports_and_ranges(value: object, expected: Ports) -> None:
    assert PortRange().convert(value, None, None) == expected


def test_a_range_lists_its_ports_and_prints_as_given() -> None:
    assert (list(Ports(9808, 9810)), str(Ports(9808, 9810)), str(Ports(9808, 9808))) == (
        [9808, 9809, 9810],
        "9808-9810",
        "9808",
    )


@pytest.mark.parametrize(
    ("value", "expected", "target"),
    [
        ("w1.internal", HostPort("w1.internal"), "w1.internal:9808"),
        ("w1.internal:9900", HostPort("w1.internal", 9900), "w1.internal:9900"),
        ("10.0.0.7", HostPort("10.0.0.7"), "10.0.0.7:9808"),
        ("fd00::7", HostPort("fd00::7"), "[fd00::7]:9808"),
        ("[fd00::7]", HostPort("fd00::7"), "[fd00::7]:9808"),
        ("[fd00::7]:9900", HostPort("fd00::7", 9900), "[fd00::7]:9900"),
    ],
)
def test_advertised_addresses(value: str, expected: HostPort, target: str) -> None:
    advertised = AdvertisedAddress().convert(value, None, None)
    assert (advertised, advertised.target(9808)) == (expected, target)


@pytest.mark.parametrize(
    ("param_type", "value", "message"),
    [
        (Address(), "exporter", "'exporter' is not host:port."),
        (Address(), ":9808", "':9808' is not host:port."),
        (Address(), "exporter:http", "'exporter:http' is not host:port."),
        (Address(), "exporter:0", "0 is not in the range 1<=x<=65535."),
        (Address(), "bad host:9808", "'bad host' is not a host name or IP address."),
        (PortRange(), "http", "'http' is not a port or a range of ports like 9808-9827."),
        (PortRange(), -1, "-1 is not a port or a range of ports like 9808-9827."),
        (PortRange(), "9808-", "'9808-' is not a port or a range of ports like 9808-9827."),
        (PortRange(), True, "True is not a port or a range of ports like 9808-9827."),
        (PortRange(), "65536", "65536 is not in the range 0<=x<=65535."),
        (PortRange(), "0-9", "0 is not in the range 1<=x<=65535."),
        (PortRange(), "9808-65536", "65536 is not in the range 1<=x<=65535."),
        (PortRange(), "9809-9808", "'9809-9808' is not a range of ports: 9809 is above 9808."),
        (AdvertisedAddress(), "w1:http", "'w1:http' is not host[:port]."),
        (AdvertisedAddress(), "[fd00::7]9900", "'[fd00::7]9900' is not host[:port]."),
        (AdvertisedAddress(), "[fd00::7", "'[fd00::7' is not host[:port]."),
        (AdvertisedAddress(), "w1:0", "0 is not in the range 1<=x<=65535."),
        (AdvertisedAddress(), ":9900", "expected a host name or IP address."),
        (AdvertisedAddress(), "bad host", "'bad host' is not a host name or IP address."),
    ],
)
def test_unusable_values_are_refused(
    param_type: click.ParamType, value: object, message: str
) -> None:
    with pytest.raises(click.BadParameter) as refused:
        param_type.convert(value, None, None)
    assert refused.value.message == message


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("celery-worker", True), ("workers_2", True), ("a b", False), ("", False), ('x"', False)],
)
def test_job_names_are_plain_words(value: str, accepted: bool) -> None:
    if accepted:
        assert JobName().convert(value, None, None) == value
    else:
        with pytest.raises(click.BadParameter, match="is not a job name"):
            JobName().convert(value, None, None)


def test_queue_names_are_comma_separated() -> None:
    assert QueueNames().convert(" a,b,,c ", None, None) == ("a", "b", "c")


def test_a_too_long_queue_name_is_refused() -> None:
    with pytest.raises(click.BadParameter, match="longer than 256 characters"):
        QueueNames().convert("q" * 257, None, None)


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("global_keyprefix=app:", {"global_keyprefix": "app:"}),
        ("priority_steps=[0,5]", {"priority_steps": [0, 5]}),
        ('{"max_retries": 3, "flag": true}', {"max_retries": 3, "flag": True}),
        ('name="123"', {"name": "123"}),
    ],
)
def test_transport_options_from_text(text: str, options: dict[str, object]) -> None:
    assert TransportOption().convert(text, None, None) == options


@pytest.mark.parametrize(
    ("text", "items"),
    [
        (
            "global_keyprefix=app:;visibility_timeout=5",
            ["global_keyprefix=app:", "visibility_timeout=5"],
        ),
        ('{"a": "x;y"}', ['{"a": "x;y"}']),
    ],
)
def test_transport_options_in_the_environment_split_at_semicolons(
    text: str, items: list[str]
) -> None:
    assert TransportOption().split_envvar_value(text) == items


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("ssl_cert_reqs=required", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ("cert_reqs=CERT_NONE", {"cert_reqs": ssl.CERT_NONE}),
        ("cert_reqs=2", {"cert_reqs": 2}),
        ("ssl_ca_certs=/etc/ca.pem", {"ssl_ca_certs": "/etc/ca.pem"}),
        ("ssl_check_hostname=false", {"ssl_check_hostname": False}),
    ],
)
def test_ssl_options_take_certificate_requirements_by_name(
    text: str, options: dict[str, object]
) -> None:
    assert SslOption().convert(text, None, None) == options


def test_an_unknown_certificate_requirement_is_refused() -> None:
    with pytest.raises(click.BadParameter, match="ssl_cert_reqs is one of required, optional"):
        SslOption().convert("ssl_cert_reqs=maybe", None, None)


def exporter_values(app: Any = None, **given: Any) -> dict[str, Any]:
    return resolve(exporter_options(), app, given)


def test_exporter_defaults() -> None:
    settings = ExporterSettings.from_options(exporter_values(broker_url="redis://localhost/0"))
    assert (
        settings.port,
        settings.host,
        settings.queues,
        dict(settings.transport_options),
        settings.worker_timeout,
        settings.purge_offline_after,
        settings.broker_timeout,
        settings.log_level,
        settings.event_exchange,
        settings.web_config,
        settings.limits,
    ) == (9808, "0.0.0.0", (), {}, 30.0, 600.0, 2.0, "INFO", "celeryev", None, LabelLimits())


def test_the_exporter_reads_the_app_conf_and_the_app_event_exchange() -> None:
    app = app_with(
        event_exchange="app-events",
        celery_prom_queues="a,b",
        celery_prom_broker_transport_option={"visibility_timeout": 5},
        celery_prom_log_level="debug",
    )

    settings = ExporterSettings.from_options(exporter_values(app, broker_url="redis://h/0"))

    assert (settings.event_exchange, settings.queues, settings.log_level) == (
        "app-events",
        ("a", "b"),
        "DEBUG",
    )
    assert dict(settings.transport_options) == {"visibility_timeout": 5}


def test_celery_prom_event_exchange_beats_the_app_event_exchange() -> None:
    app = app_with(event_exchange="app-events", celery_prom_event_exchange="prom-events")

    assert exporter_values(app)["event_exchange"] == "prom-events"


def test_queues_and_transport_options_add_to_the_app_ones() -> None:
    options = exporter_values(
        queues=(("a", "b"), ("c",)),
        broker_transport_option=({"visibility_timeout": 10}, {"priority_steps": [0, 5]}),
    )

    settings = ExporterSettings.from_options(
        options,
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
    ("app_ssl", "given", "expected"),
    [
        (None, (), False),
        (True, (), True),
        ({"ca_certs": "/app.pem"}, (), {"ca_certs": "/app.pem"}),
        (
            {"ca_certs": "/app.pem", "certfile": "/c.pem"},
            ({"ca_certs": "/mine.pem"},),
            {"ca_certs": "/mine.pem", "certfile": "/c.pem"},
        ),
        (True, ({"ca_certs": "/mine.pem"},), {"ca_certs": "/mine.pem"}),
    ],
)
def test_ssl_options_override_the_apps_broker_use_ssl(
    app_ssl: Any, given: tuple[dict[str, str], ...], expected: object
) -> None:
    settings = ExporterSettings.from_options(
        exporter_values(broker_ssl_option=given or None),
        default_broker_url="amqps://h//",
        default_ssl=app_ssl,
    )

    assert settings.broker_ssl == expected


def test_the_broker_url_is_required() -> None:
    with pytest.raises(ConfigError, match="no broker URL"):
        ExporterSettings.from_options(exporter_values())


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
            exc_info=sys.exc_info(),
        )
    text = formatter.format(record)
    assert "hunter2" not in text
    assert "amqp://u:**@mq//" in text
    assert "redis://:**@db:6379/0" in text
