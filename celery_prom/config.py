"""Settings: one value per option, from the command line, the environment or ``app.conf``.

Precedence is command line, then ``CELERY_PROM_*`` environment variables, then the app's
configuration (``celery_prom_*`` keys), then the default. Every value is validated here, so
a bad one becomes a one-line ``ConfigError`` naming its source, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from kombu.transport import TRANSPORT_ALIASES

from celery_prom import metrics
from celery_prom.store import LabelLimits, bucket_bounds

DEFAULT_PORT = 9808
DEFAULT_HOST = "0.0.0.0"
DEFAULT_WORKER_TIMEOUT = 30.0
DEFAULT_PURGE_OFFLINE_AFTER = 600.0
DEFAULT_BROKER_TIMEOUT = 2.0
DEFAULT_EVENT_EXCHANGE = "celeryev"
DEFAULT_LOG_LEVEL = "INFO"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The credentials part of any URL: ``scheme://user:password@`` (user may be empty), up to
# the last ``@`` of the word, so an unencoded ``@`` in a password is masked too. A word ends
# at ``;``, which separates the URLs of a failover list; a password may hold a ``,``.
_URL_CREDENTIALS = re.compile(r"""([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s'";,]*):[^\s'";]*@""")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message is fit to show the user as is."""


class OptionError(click.ClickException):
    """A bad option value: printed as ``Error: <message>``, exit status 2.

    Unlike ``click.UsageError`` it never prints the usage block, so the error is one line
    even when raised from inside a running command (such as ``celery worker``).
    """

    exit_code = 2


@dataclass(frozen=True)
class Source:
    """Where settings come from, in precedence order."""

    cli: Mapping[str, Any]
    env: Mapping[str, str]
    conf: Mapping[str, Any]
    #: Prefix of the command-line options, where they share a namespace with Celery's own
    #: (the worker's ``--prom-port``); env and app.conf names are namespaced already.
    cli_prefix: str = ""

    def lookup(self, option: str) -> tuple[Any, str] | None:
        """The first value set for ``option`` and a description of where it came from."""
        cli_name = f"{self.cli_prefix}{option}"
        value = self.cli.get(cli_name)
        if value is not None:
            return value, f"--{cli_name.replace('_', '-')}"
        env_name = f"CELERY_PROM_{option.upper()}"
        value = self.env.get(env_name)
        if value is not None and value != "":
            return value, env_name
        conf_name = f"celery_prom_{option}"
        value = self.conf.get(conf_name)
        if value is not None:
            return value, f"app.conf.{conf_name}"
        return None

    def get(self, option: str, parse: Callable[[Any], T], default: T) -> T:
        found = self.lookup(option)
        if found is None:
            return default
        value, origin = found
        try:
            return parse(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid value for {origin}: {exc}") from None


@dataclass(frozen=True)
class WorkerSettings:
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    web_config: str | None = None
    runtime_buckets: tuple[float, ...] = metrics.DEFAULT_RUNTIME_BUCKETS
    queue_wait_buckets: tuple[float, ...] = metrics.DEFAULT_QUEUE_WAIT_BUCKETS
    limits: LabelLimits = field(default_factory=LabelLimits)

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @classmethod
    def resolve(cls, source: Source) -> WorkerSettings:
        return cls(
            port=source.get("port", parse_port, DEFAULT_PORT),
            host=source.get("host", parse_host, DEFAULT_HOST),
            web_config=source.get("web_config", parse_path, None),
            **recording_settings(source),
        )


@dataclass(frozen=True)
class ExporterSettings:
    """``celery-prom exporter`` (and ``celery prom``) settings; see ``resolve``."""

    broker_url: str
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    queues: tuple[str, ...] = ()
    transport_options: Mapping[str, Any] = field(default_factory=dict)
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
    def resolve(
        cls,
        source: Source,
        default_broker_url: str | None = None,
        default_queues: Sequence[str] = (),
        default_transport_options: Mapping[str, Any] | None = None,
        default_event_exchange: str = DEFAULT_EVENT_EXCHANGE,
    ) -> ExporterSettings:
        """Settings from ``source``; the defaults are an app's own (for ``celery prom``).

        Queues given on the command line or in the environment add to the app's queues, and
        transport options given there override the app's option of the same name.
        """
        broker_url = source.get("broker_url", parse_broker_url, default_broker_url)
        if broker_url is None:
            raise ConfigError("no broker URL: pass --broker-url or set CELERY_PROM_BROKER_URL")
        no_queues: tuple[str, ...] = ()
        no_options: dict[str, Any] = {}
        queues = source.get("queues", parse_queues, no_queues)
        options = source.get("broker_transport_option", parse_transport_options, no_options)
        return cls(
            broker_url=broker_url,
            port=source.get("port", parse_listen_port, DEFAULT_PORT),
            host=source.get("host", parse_host, DEFAULT_HOST),
            queues=tuple(dict.fromkeys((*default_queues, *queues))),
            transport_options={**(default_transport_options or {}), **options},
            worker_timeout=source.get("worker_timeout", parse_seconds, DEFAULT_WORKER_TIMEOUT),
            purge_offline_after=source.get(
                "purge_offline_after", parse_seconds, DEFAULT_PURGE_OFFLINE_AFTER
            ),
            broker_timeout=source.get("broker_timeout", parse_seconds, DEFAULT_BROKER_TIMEOUT),
            event_exchange=source.get("event_exchange", parse_name, default_event_exchange),
            log_level=source.get("log_level", parse_log_level, DEFAULT_LOG_LEVEL),
            web_config=source.get("web_config", parse_path, None),
            **recording_settings(source),
        )


def recording_settings(source: Source) -> dict[str, Any]:
    """The settings the worker and the exporter share: histogram buckets and label caps."""
    defaults = LabelLimits()
    return {
        "runtime_buckets": source.get(
            "runtime_buckets", parse_buckets, metrics.DEFAULT_RUNTIME_BUCKETS
        ),
        "queue_wait_buckets": source.get(
            "queue_wait_buckets", parse_buckets, metrics.DEFAULT_QUEUE_WAIT_BUCKETS
        ),
        "limits": LabelLimits(
            task_names=source.get("max_task_names", parse_positive_int, defaults.task_names),
            queues=source.get("max_queues", parse_positive_int, defaults.queues),
            hostnames=source.get("max_hostnames", parse_positive_int, defaults.hostnames),
            exceptions=source.get("max_exceptions", parse_positive_int, defaults.exceptions),
        ),
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


def parse_broker_url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        # Not echoed: a mistyped URL may be mostly password.
        raise ValueError("not a broker URL (like redis://host:6379/0)")
    scheme = value.split("://", 1)[0].split("+", 1)[0]
    if not _known_transport(scheme):
        raise ValueError(f"unknown broker transport {scheme!r} in {mask_secrets(value)}")
    return value


def parse_queues(value: Any) -> tuple[str, ...]:
    items: Sequence[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = [part for item in value for part in str(item).split(",")]
    else:
        raise ValueError("expected comma-separated queue names")
    names = [item.strip() for item in items if item.strip()]
    for name in names:
        if len(name) > metrics.MAX_LABEL_VALUE_LENGTH:
            raise ValueError(f"queue name longer than {metrics.MAX_LABEL_VALUE_LENGTH} characters")
    return tuple(dict.fromkeys(names))


def parse_transport_options(value: Any) -> dict[str, Any]:
    """``key=value`` pairs (a sequence, or one string joined with ``;``) or a JSON object.

    Values are read as JSON when they parse as JSON (numbers, booleans, lists), else taken
    as text: ``visibility_timeout=3600``, ``global_keyprefix=app:``.
    """
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        if value.lstrip().startswith("{"):
            try:
                parsed = json.loads(value)
            except ValueError:
                raise ValueError("transport options are not a valid JSON object") from None
            if not isinstance(parsed, dict):
                raise ValueError("transport options are not a valid JSON object")
            return parsed
        pairs: Sequence[Any] = [pair for pair in value.split(";") if pair.strip()]
    elif isinstance(value, (list, tuple)):
        pairs = value
    else:
        raise ValueError("expected key=value")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{mask_secrets(str(pair))!r} is not key=value")
        options[key.strip()] = _json_or_text(text)
    return options


def parse_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return seconds


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a name")
    return value.strip()


def parse_log_level(value: Any) -> str:
    level = str(value).strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return level


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _known_transport(scheme: str) -> bool:
    return scheme in TRANSPORT_ALIASES


def parse_port(value: Any) -> int:
    port = _parse_int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (0-65535, 0 disables)")
    return port


def parse_listen_port(value: Any) -> int:
    """A port that must be served on (the exporter's, the demo's): 0 cannot turn it off."""
    port = _parse_int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (1-65535)")
    return port


def parse_positive_int(value: Any) -> int:
    number = _parse_int(value)
    if number < 1:
        raise ValueError(f"{number} is not a positive integer")
    return number


def parse_host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a host name or IP address")
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(part.replace("-", "").isalnum() for part in host.split(".")):
            raise ValueError(f"{value!r} is not a host name or IP address") from None
    return host


def parse_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a file path")
    return value


def parse_buckets(value: Any) -> tuple[float, ...]:
    items: Sequence[Any]
    if isinstance(value, str):
        items = [item for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError("expected comma-separated numbers")
    try:
        bounds = [float(item) for item in items]
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a list of numbers") from None
    return bucket_bounds(bounds)


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"{value!r} is not an integer")
