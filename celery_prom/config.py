"""Settings: one value per option, from the command line, the environment or ``app.conf``.

Precedence is command line, then ``CELERY_PROM_*`` environment variables, then the app's
configuration (``celery_prom_*`` keys), then the default. Every value is validated here, so
a bad one becomes a one-line ``ConfigError`` naming its source, never a traceback.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from celery_prom import metrics
from celery_prom.store import LabelLimits

DEFAULT_PORT = 9808
DEFAULT_HOST = "0.0.0.0"

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message is fit to show the user as is."""


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
        defaults = LabelLimits()
        return cls(
            port=source.get("port", parse_port, DEFAULT_PORT),
            host=source.get("host", parse_host, DEFAULT_HOST),
            web_config=source.get("web_config", parse_path, None),
            runtime_buckets=source.get(
                "runtime_buckets", parse_buckets, metrics.DEFAULT_RUNTIME_BUCKETS
            ),
            queue_wait_buckets=source.get(
                "queue_wait_buckets", parse_buckets, metrics.DEFAULT_QUEUE_WAIT_BUCKETS
            ),
            limits=LabelLimits(
                task_names=source.get("max_task_names", parse_positive_int, defaults.task_names),
                queues=source.get("max_queues", parse_positive_int, defaults.queues),
                hostnames=source.get("max_hostnames", parse_positive_int, defaults.hostnames),
                exceptions=source.get("max_exceptions", parse_positive_int, defaults.exceptions),
            ),
        )


def parse_port(value: Any) -> int:
    port = _parse_int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (0-65535, 0 disables)")
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
        bounds = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a list of numbers") from None
    finite = [b for b in bounds if b != float("inf")]
    if not finite:
        raise ValueError("at least one finite bucket bound is needed")
    if finite != sorted(set(finite)) or any(math.isnan(b) for b in finite):
        raise ValueError(f"bucket bounds must increase strictly: {value!r}")
    return tuple(finite)


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"{value!r} is not an integer")
