"""``celery-prom demo``: the live demo, on an embedded broker unless told otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from celery_prom.cli.errors import OptionError
from celery_prom.config import DEFAULT_PORT, parse_broker_url, parse_host, parse_listen_port

T = TypeVar("T")

DEFAULT_EXPORTER_PORT = DEFAULT_PORT + 1


@click.command(name="demo")
@click.option(
    "--broker-url",
    default=None,
    help="Run on this broker instead of the embedded one (kombu's filesystem "
    "transport in a temporary folder).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the worker and the exporter listen on.",
)
@click.option(
    "--worker-port",
    default=str(DEFAULT_PORT),
    show_default=True,
    help="Port of the worker's /metrics.",
)
@click.option(
    "--exporter-port",
    default=str(DEFAULT_EXPORTER_PORT),
    show_default=True,
    help="Port of the exporter's /metrics.",
)
@click.option(
    "--duration", default=None, help="Stop after this many seconds (default: run until Ctrl-C)."
)
def demo(
    broker_url: str | None, host: str, worker_port: str, exporter_port: str, duration: str | None
) -> None:
    """A live shop with a prefork worker and the exporter: real metrics, one command."""
    # Imported on use, not with the entry point: see celery_prom/__init__.py.
    from celery_prom.demo.runner import DemoOptions, run_demo  # noqa: PLC0415

    options = DemoOptions(
        broker_url=None
        if broker_url is None
        else _checked(parse_broker_url, broker_url, "--broker-url"),
        host=_checked(parse_host, host, "--host"),
        worker_port=_checked(parse_listen_port, worker_port, "--worker-port"),
        exporter_port=_checked(parse_listen_port, exporter_port, "--exporter-port"),
        duration=None if duration is None else _checked(_seconds, duration, "--duration"),
    )
    sys.exit(run_demo(options))


def _checked(parse: Callable[[str], T], value: str, option: str) -> T:
    try:
        return parse(value)
    except ValueError as exc:
        raise OptionError(f"invalid value for {option}: {exc}") from None


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return seconds
