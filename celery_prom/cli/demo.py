"""``celery-prom demo``: the live demo, on an embedded broker unless told otherwise."""

from __future__ import annotations

import sys

import click

from celery_prom.cli.errors import OneLineErrors
from celery_prom.config import DEFAULT_PORT, LISTEN_PORT, BrokerURL, Host, Seconds

DEFAULT_EXPORTER_PORT = DEFAULT_PORT + 1


@click.command(name="demo", cls=OneLineErrors)
@click.option(
    "--broker-url",
    type=BrokerURL(),
    help="Run on this broker instead of the embedded one (kombu's filesystem "
    "transport in a temporary folder).",
)
@click.option(
    "--host",
    type=Host(),
    default="127.0.0.1",
    show_default=True,
    help="Address the worker and the exporter listen on.",
)
@click.option(
    "--worker-port",
    type=LISTEN_PORT,
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of the worker's /metrics.",
)
@click.option(
    "--exporter-port",
    type=LISTEN_PORT,
    default=DEFAULT_EXPORTER_PORT,
    show_default=True,
    help="Port of the exporter's /metrics.",
)
@click.option(
    "--duration", type=Seconds(), help="Stop after this many seconds (default: run until Ctrl-C)."
)
def demo(
    broker_url: str | None, host: str, worker_port: int, exporter_port: int, duration: float | None
) -> None:
    """A live shop with a prefork worker and the exporter: real metrics, one command."""
    # Imported on use, not with the entry point: see celery_prom/__init__.py.
    from celery_prom.demo.runner import DemoOptions, run_demo  # noqa: PLC0415

    sys.exit(run_demo(DemoOptions(broker_url, host, worker_port, exporter_port, duration)))
