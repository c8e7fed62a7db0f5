"""Settings: what each one accepts, and where its value comes from.

Every setting is a click option, a ``Setting``. Click takes its value from the command line,
else from its ``CELERY_PROM_<NAME>`` environment variable; only then does it ask for the
default, and a ``Setting``'s default is the Celery app's ``celery_prom_<name>`` when the app
sets one. So the precedence is command line, environment, ``app.conf``, default, and click's
types check the value wherever it came from: a bad one is a ``click.BadParameter`` naming
its source. Settings that have no command line of their own (the worker's buckets and caps)
are read the same way, by ``resolve``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from kombu.transport import TRANSPORT_ALIASES
from kombu.utils.url import parse_ssl_cert_reqs

from celery_prom import metrics
from celery_prom.metrics import LabelLimits

DEFAULT_PORT = 9808
DEFAULT_HOST = "0.0.0.0"
DEFAULT_WORKER_TIMEOUT = 30.0
DEFAULT_PURGE_OFFLINE_AFTER = 600.0
DEFAULT_BROKER_TIMEOUT = 2.0
DEFAULT_EVENT_EXCHANGE = "celeryev"
DEFAULT_LOG_LEVEL = "INFO"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: A port that must be served on (the exporter's, the demo's).
LISTEN_PORT = click.IntRange(1, 65535)
COUNT = click.IntRange(min=1)
#: A missing file is reported by the web-config loader, which also reloads it.
WEB_CONFIG = click.Path(dir_okay=False)

#: ``LabelLimits``' fields, each set by ``max_<field>``, and what they count.
_LABEL_CAPS = (
    ("task_names", "task names"),
    ("queues", "queue names"),
    ("hostnames", "worker hostnames"),
    ("exceptions", "exception names"),
)

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]
else:  # click 8.4 made ParamType generic; click 8.1 to 8.3 cannot subscript it
    _ParamType = click.ParamType

# The credentials part of any URL: ``scheme://user:password@`` (user may be empty), up to
# the last ``@`` of the word, so an unencoded ``@`` in a password is masked too. A word ends
# at ``;``, which separates the URLs of a failover list; a password may hold a ``,``.
_URL_CREDENTIALS = re.compile(r"""([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s'";,]*):[^\s'";]*@""")


#: The field of a worker's heartbeats (and its other worker events) that holds the address
#: Prometheus scrapes it at: the worker step adds it, the exporter lists it on /sd/workers.
ADDRESS_FIELD = "celery_prom_address"


class ConfigError(ValueError):
    """A setting that cannot be used; the message is fit to show the user as is."""


class OptionError(click.ClickException):
    """A bad option value: printed as ``Error: <message>``, exit status 2.

    Unlike ``click.UsageError`` it never prints the usage block, so the error is one line
    even when raised from inside a running command (such as ``celery worker``).
    """

    exit_code = 2


class Setting(click.Option):
    """``--<prefix><key>``, else ``CELERY_PROM_<KEY>``, else the app's ``celery_prom_<key>``
    (then ``app_setting``, the app's own setting of the same meaning), else the default.

    A bad value's ``click.BadParameter`` names where it came from: the option, the variable
    or the ``app.conf`` key.
    """

    def __init__(
        self,
        key: str,
        *decls: str,
        prefix: str = "",
        app_setting: str | None = None,
        **attrs: Any,
    ) -> None:
        self.env_name = f"CELERY_PROM_{key.upper()}"
        self.conf_keys = (f"celery_prom_{key}", *([app_setting] if app_setting else []))
        attrs.setdefault("show_default", True)
        super().__init__(
            [*decls, f"--{prefix}{key}".replace("_", "-")],
            envvar=self.env_name,
            show_envvar=True,
            # Celery runs its commands with auto_envvar_prefix="CELERY", which would also
            # read CELERY_WORKER_PROM_PORT and the like: one variable per setting.
            allow_from_autoenv=False,
            **attrs,
        )

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        # Click asks for the default only when neither the command line nor the environment
        # gave a value: that is where the app's configuration comes in.
        found = self._from_app(ctx)
        if found is None:
            return super().get_default(ctx, call)
        value = found[1]
        if self.multiple and isinstance(value, str):  # one string, read as the environment's
            return self.type.split_envvar_value(value)
        if self.multiple and isinstance(value, Mapping):
            return (value,)
        return value

    def type_cast_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().type_cast_value(ctx, value)
        except click.BadParameter as exc:
            exc.param_hint = self._origin(ctx)
            raise

    def _from_app(self, ctx: click.Context) -> tuple[str, Any] | None:
        conf = app_conf(ctx)
        for key in self.conf_keys:
            value = conf.get(key)
            if value is not None:
                return key, value
        return None

    def _origin(self, ctx: click.Context) -> list[str]:
        """Where the value being converted came from, to name it in an error."""
        source = ctx.get_parameter_source(self.name) if self.name else None
        if source is ParameterSource.ENVIRONMENT:
            return [self.env_name]
        found = self._from_app(ctx) if source is ParameterSource.DEFAULT else None
        if found is not None:
            return [f"app.conf.{found[0]}"]
        return self.opts


def app_conf(ctx: click.Context) -> Mapping[str, Any]:
    """The configuration of the Celery app whose command this is: Celery keeps the app in
    its context object as ``obj.app`` (checked on Celery 5.3 to 5.7); none for
    ``celery-prom exporter``."""
    app = getattr(ctx.obj, "app", None)
    return {} if app is None else app.conf


def resolve(settings: Sequence[Setting], app: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """Values by option name: ``given``'s where it holds one (options a command line has
    resolved already), the others from the environment, ``app.conf`` or their default."""
    values = {name: value for name, value in given.items() if value is not None}
    missing: list[click.Parameter] = [s for s in settings if s.name not in values]
    command = click.Command(None, params=missing, add_help_option=False)
    try:
        # As for a command's options, from an empty command line.
        context = command.make_context("celery-prom", [], obj=SimpleNamespace(app=app))
    except click.UsageError as exc:
        raise ConfigError(mask_secrets(exc.format_message())) from None
    return {**context.params, **values}


class Seconds(click.FloatRange):
    """A positive, finite number of seconds."""

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds.", param, ctx)
        return seconds


class Host(_ParamType):
    name = "host"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail("expected a host name or IP address.", param, ctx)
        host = value.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not all(part.replace("-", "").isalnum() for part in host.split(".")):
                self.fail(f"{value!r} is not a host name or IP address.", param, ctx)
        return host


class Address(_ParamType):
    """``host:port`` of a scrape target (an IPv6 host in brackets)."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        host, separator, port = str(value).rpartition(":")
        if not separator or not host or not port.isdigit():
            self.fail(f"{value!r} is not host:port.", param, ctx)
        bare_host = Host().convert(host, param, ctx)
        return join_host_port(bare_host, LISTEN_PORT.convert(int(port), param, ctx))


@dataclass(frozen=True)
class HostPort:
    """A host, and the port to reach it on where one was given."""

    host: str
    port: int | None = None

    def target(self, default_port: int) -> str:
        """``host:port`` of a scrape target, with ``default_port`` if none was given."""
        return join_host_port(self.host, default_port if self.port is None else self.port)


class AdvertisedAddress(_ParamType):
    """``host`` or ``host:port``: a bare IPv6 address is a host, and takes brackets when a
    port follows (``[fd00::7]:9808``)."""

    name = "host[:port]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> HostPort:
        if isinstance(value, HostPort):
            return value
        text = str(value).strip()
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                self.fail(f"{value!r} is not host[:port].", param, ctx)
            port = rest[1:] if rest else None
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        else:
            host, port = text, None
        if port is not None and not port.isdigit():
            self.fail(f"{value!r} is not host[:port].", param, ctx)
        return HostPort(
            Host().convert(host, param, ctx),
            None if port is None else LISTEN_PORT.convert(int(port), param, ctx),
        )


def join_host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Ports:
    """The ports a worker's endpoint may take, the first free one of them; ``0`` alone
    turns the endpoint off."""

    first: int
    last: int

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


class PortRange(_ParamType):
    """A port, ``0`` to turn the endpoint off, or ``FIRST-LAST``, both within 1 to 65535."""

    name = "port[-port]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Ports:
        if isinstance(value, Ports):
            return value
        found = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", str(value))
        if isinstance(value, bool) or found is None:
            self.fail(f"{value!r} is not a port or a range of ports like 9808-9827.", param, ctx)
        if found.group(2) is None:
            port = click.IntRange(0, 65535).convert(int(found.group(1)), param, ctx)
            return Ports(port, port)
        first, last = (LISTEN_PORT.convert(int(number), param, ctx) for number in found.groups())
        if first > last:
            self.fail(f"{value!r} is not a range of ports: {first} is above {last}.", param, ctx)
        return Ports(first, last)


class JobName(_ParamType):
    """A Prometheus scrape job's name, plain enough to write into YAML, JSON and PromQL."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            self.fail(f"{value!r} is not a job name (letters, digits, '_' and '-').", param, ctx)
        return value


class BrokerURL(_ParamType):
    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or "://" not in value:
            # Not echoed: a mistyped URL may be mostly password.
            self.fail("not a broker URL (like redis://host:6379/0).", param, ctx)
        scheme = value.split("://", 1)[0].split("+", 1)[0]
        if scheme not in TRANSPORT_ALIASES:
            self.fail(f"unknown broker transport {scheme!r} in {mask_secrets(value)}.", param, ctx)
        return value


class QueueNames(_ParamType):
    """Comma-separated queue names."""

    name = "names"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        names = tuple(name.strip() for name in str(value).split(",") if name.strip())
        if any(len(name) > metrics.MAX_LABEL_VALUE_LENGTH for name in names):
            self.fail(
                f"queue name longer than {metrics.MAX_LABEL_VALUE_LENGTH} characters.", param, ctx
            )
        return names


class TransportOption(_ParamType):
    """``key=value``, the value read as JSON when it parses as JSON (numbers, booleans,
    lists), else taken as text: ``visibility_timeout=3600``, ``global_keyprefix=app:``; or
    a JSON object of several."""

    name = "key=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dict[str, Any]:
        if isinstance(value, Mapping):
            return dict(value)
        text = str(value)
        if text.lstrip().startswith("{"):
            parsed = _json_or_text(text)
            if not isinstance(parsed, dict):
                self.fail("transport options are not a valid JSON object.", param, ctx)
            return parsed
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            self.fail(f"{mask_secrets(text)!r} is not key=value.", param, ctx)
        return {key.strip(): _json_or_text(raw)}

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        """In the environment: a JSON object, or ``key=value`` pairs joined with ``;``."""
        if rv.lstrip().startswith("{"):
            return [rv]
        return [pair for pair in rv.split(";") if pair.strip()]


class SslOption(TransportOption):
    """A TLS setting of the broker connection, ``key=value`` as for a transport option;
    a certificate requirement (``ssl_cert_reqs``, ``cert_reqs``) may be given by name
    (``required``, ``optional``, ``none``), as in a broker URL."""

    _CERT_REQS = ("ssl_cert_reqs", "cert_reqs")

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dict[str, Any]:
        options = super().convert(value, param, ctx)
        for key in self._CERT_REQS:
            if isinstance(options.get(key), str):
                try:
                    options[key] = parse_ssl_cert_reqs(options[key])
                except KeyError:
                    self.fail(f"{key} is one of required, optional or none.", param, ctx)
        return options


class Buckets(_ParamType):
    """Histogram bucket bounds in seconds, increasing: comma-separated, or a list."""

    name = "float list"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[float, ...]:
        items = value.split(",") if isinstance(value, str) else value
        try:
            bounds = tuple(float(item) for item in items if str(item).strip())
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a list of numbers.", param, ctx)
        try:
            return metrics.bucket_bounds(bounds)
        except ValueError as exc:
            self.fail(f"{exc}.", param, ctx)


def worker_endpoint_settings(
    option: type[Setting] = Setting, command: str = "worker"
) -> list[Setting]:
    """The endpoint's settings, named as ``celery worker``'s (and ``celery beat``'s)
    options."""
    settings = [
        option(
            "port",
            prefix="prom-",
            type=PortRange(),
            default=DEFAULT_PORT,
            help=f"Port of the {command}'s /metrics endpoint, or a range (9808-9827) to take "
            "the first free port of; 0 turns metrics off. App setting: celery_prom_port.",
        ),
        option(
            "host",
            prefix="prom-",
            type=Host(),
            default=DEFAULT_HOST,
            help="Address the endpoint listens on. App setting: celery_prom_host.",
        ),
        option(
            "web_config",
            prefix="prom-",
            type=WEB_CONFIG,
            help="Prometheus web-config file (TLS, basic auth) for the endpoint. "
            "App setting: celery_prom_web_config.",
        ),
    ]
    if command == "worker":  # beat sends no heartbeats to advertise its address in
        settings.append(
            option(
                "advertise",
                prefix="prom-",
                type=AdvertisedAddress(),
                show_default=False,
                help="Address the exporter's /sd/workers gives Prometheus for this worker "
                "(default: the --prom-host address when it is a specific one, else this "
                "machine's fully qualified name; the port: the one served). "
                "App setting: celery_prom_advertise.",
            )
        )
    return settings


def recording_options() -> list[Setting]:
    """Histogram buckets and label caps: options of the exporter, settings of the worker."""
    limits = LabelLimits()
    return [
        Setting(
            "runtime_buckets",
            type=Buckets(),
            default=metrics.DEFAULT_RUNTIME_BUCKETS,
            help="Runtime histogram bounds, comma-separated seconds.",
        ),
        Setting(
            "queue_wait_buckets",
            type=Buckets(),
            default=metrics.DEFAULT_QUEUE_WAIT_BUCKETS,
            help="Queue-wait histogram bounds, comma-separated seconds.",
        ),
        *(
            Setting(
                f"max_{name}",
                type=COUNT,
                default=getattr(limits, name),
                help=f"Cap on distinct {counted} (then `_other`).",
            )
            for name, counted in _LABEL_CAPS
        ),
    ]


def exporter_options() -> list[Setting]:
    """The options of ``celery-prom exporter`` and ``celery prom``."""
    return [
        Setting(
            "broker_url",
            type=BrokerURL(),
            # Not even celery prom's app.conf value: it may hold a password.
            show_default=False,
            help="Broker URL, e.g. redis://host:6379/0 (celery prom: the app's).",
        ),
        Setting("host", type=Host(), default=DEFAULT_HOST, help="Address to listen on."),
        Setting("port", type=LISTEN_PORT, default=DEFAULT_PORT, help="Port of /metrics."),
        Setting(
            "queues",
            "-Q",
            type=QueueNames(),
            multiple=True,
            help="Queues to report, comma-separated; repeatable (celery prom: added to the app's).",
        ),
        Setting(
            "broker_transport_option",
            type=TransportOption(),
            multiple=True,
            show_default=False,
            help="kombu transport option key=value (value read as JSON when it parses); "
            "repeatable. In the environment: k=v;k2=v2 or a JSON object.",
        ),
        Setting(
            "broker_ssl_option",
            type=SslOption(),
            multiple=True,
            show_default=False,
            help="TLS setting of the broker connection key=value, as kombu takes them "
            "(Redis: ssl_ca_certs=PATH, ssl_cert_reqs=required); repeatable, like "
            "--broker-transport-option (celery prom: added to the app's broker_use_ssl).",
        ),
        *(
            Setting(key, type=Seconds(), default=default, help=f"Seconds {meaning}.")
            for key, default, meaning in (
                (
                    "worker_timeout",
                    DEFAULT_WORKER_TIMEOUT,
                    "without a heartbeat before a worker is down",
                ),
                (
                    "purge_offline_after",
                    DEFAULT_PURGE_OFFLINE_AFTER,
                    "without a heartbeat before a worker's series are dropped",
                ),
                ("broker_timeout", DEFAULT_BROKER_TIMEOUT, "a scrape waits for the broker"),
            )
        ),
        Setting(
            "event_exchange",
            default=DEFAULT_EVENT_EXCHANGE,
            app_setting="event_exchange",
            help="Exchange Celery events are sent to (celery prom: the app's event_exchange).",
        ),
        Setting(
            "web_config",
            type=WEB_CONFIG,
            help="Prometheus web-config file (TLS, basic auth) for the endpoint.",
        ),
        Setting(
            "log_level",
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            default=DEFAULT_LOG_LEVEL,
        ),
        *recording_options(),
    ]


@dataclass(frozen=True)
class WorkerSettings:
    ports: Ports = Ports(DEFAULT_PORT, DEFAULT_PORT)
    host: str = DEFAULT_HOST
    advertise: HostPort | None = None
    web_config: str | None = None
    runtime_buckets: tuple[float, ...] = metrics.DEFAULT_RUNTIME_BUCKETS
    queue_wait_buckets: tuple[float, ...] = metrics.DEFAULT_QUEUE_WAIT_BUCKETS
    limits: LabelLimits = field(default_factory=LabelLimits)

    @property
    def enabled(self) -> bool:
        return self.ports.first != 0

    @classmethod
    def resolve(cls, app: Any, options: Mapping[str, Any]) -> WorkerSettings:
        """The settings of ``app``'s worker, whose ``--prom-*`` options are ``options``.

        Click has resolved those in full when ``install`` added them to the worker; when
        only the step was added, and for the settings that have no option, the
        environment, ``app.conf`` and the defaults are read here, in the same order.
        """
        settings = [*worker_endpoint_settings(), *recording_options()]
        values = resolve(settings, app, options)
        return cls(
            ports=values["prom_port"],
            host=values["prom_host"],
            advertise=values["prom_advertise"],
            web_config=values["prom_web_config"],
            **recording_settings(values),
        )


@dataclass(frozen=True)
class ExporterSettings:
    """``celery-prom exporter`` (and ``celery prom``) settings; see ``from_options``."""

    broker_url: str
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    queues: tuple[str, ...] = ()
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    #: kombu's ``ssl`` of the broker connection: True, or the TLS settings.
    broker_ssl: Mapping[str, Any] | bool = False
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    purge_offline_after: float = DEFAULT_PURGE_OFFLINE_AFTER
    broker_timeout: float = DEFAULT_BROKER_TIMEOUT
    event_exchange: str = DEFAULT_EVENT_EXCHANGE
    log_level: str = DEFAULT_LOG_LEVEL
    web_config: str | None = None
    runtime_buckets: tuple[float, ...] = metrics.DEFAULT_RUNTIME_BUCKETS
    queue_wait_buckets: tuple[float, ...] = metrics.DEFAULT_QUEUE_WAIT_BUCKETS
    limits: LabelLimits = field(default_factory=LabelLimits)

    @property
    def safe_broker_url(self) -> str:
        """The broker URL with its password masked, for logs, errors and /health."""
        return mask_secrets(self.broker_url)

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        default_broker_url: str | None = None,
        default_queues: Sequence[str] = (),
        default_transport_options: Mapping[str, Any] | None = None,
        default_ssl: Mapping[str, Any] | bool | None = None,
    ) -> ExporterSettings:
        """Settings from the values of ``exporter_options``; the defaults are an app's own
        (for ``celery prom``).

        Queues given as options add to the app's queues, and transport options and TLS
        settings given as options override the app's setting of the same name.
        """
        broker_url = options["broker_url"] or default_broker_url
        if broker_url is None:
            raise ConfigError("no broker URL: pass --broker-url or set CELERY_PROM_BROKER_URL")
        queues = (name for names in options["queues"] for name in names)
        transport_options = dict(default_transport_options or {})
        for given in options["broker_transport_option"]:
            transport_options.update(given)
        return cls(
            broker_url=broker_url,
            port=options["port"],
            host=options["host"],
            queues=tuple(dict.fromkeys((*default_queues, *queues))),
            transport_options=transport_options,
            broker_ssl=_broker_ssl(default_ssl, options["broker_ssl_option"]),
            worker_timeout=options["worker_timeout"],
            purge_offline_after=options["purge_offline_after"],
            broker_timeout=options["broker_timeout"],
            event_exchange=options["event_exchange"],
            log_level=options["log_level"],
            web_config=options["web_config"],
            **recording_settings(options),
        )


def recording_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the worker and the exporter share, from ``recording_options``' values."""
    return {
        "runtime_buckets": values["runtime_buckets"],
        "queue_wait_buckets": values["queue_wait_buckets"],
        "limits": LabelLimits(**{name: values[f"max_{name}"] for name, _ in _LABEL_CAPS}),
    }


def _broker_ssl(
    default: Mapping[str, Any] | bool | None, given: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | bool:
    """kombu's ``ssl``: the app's (True, or its TLS settings) with the given settings over it."""
    if not given:
        return default or False
    return {
        **(default if isinstance(default, Mapping) else {}),
        **{key: value for settings in given for key, value in settings.items()},
    }


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``**``."""
    return _URL_CREDENTIALS.sub(r"\1:**@", text)


class MaskingFormatter(logging.Formatter):
    """Formats log records, tracebacks included, with URL passwords masked.

    Broker client libraries put connection URLs into their exception messages, so masking
    the final text is the one place that catches them all.
    """

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
