"""``celery-prom exporter`` and its twin ``celery -A proj prom``.

Every option is taken as text and validated by ``config.ExporterSettings.resolve``, which
also reads ``CELERY_PROM_<OPTION>`` environment variables (and, for ``celery prom``, the
app's ``celery_prom_*`` settings), so a bad value gets the same one-line error wherever it
came from. Errors are printed as one line, with any URL password masked, and exit with 2;
a port the exporter cannot listen on (taken, or not allowed) exits with 1, as a worker does.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import click

from celery_prom.cli.demo import demo
from celery_prom.config import (
    DEFAULT_BROKER_TIMEOUT,
    DEFAULT_EVENT_EXCHANGE,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_PURGE_OFFLINE_AFTER,
    DEFAULT_WORKER_TIMEOUT,
    ConfigError,
    ExporterSettings,
    MaskingFormatter,
    Source,
    mask_secrets,
)
from celery_prom.exporter.service import Exporter

USAGE_ERROR = 2
CANNOT_LISTEN = 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("--broker-url",),
        {"help": "Broker URL, e.g. redis://host:6379/0 (env CELERY_PROM_BROKER_URL)."},
    ),
    (("--host",), {"help": f"Address to listen on (default {DEFAULT_HOST})."}),
    (("--port",), {"help": f"Port of /metrics (default {DEFAULT_PORT})."}),
    (
        ("-Q", "--queues"),
        {"multiple": True, "help": "Queues to report, comma-separated; repeatable."},
    ),
    (
        ("--broker-transport-option",),
        {
            "multiple": True,
            "help": "kombu transport option key=value (value read as JSON "
            "when it parses); repeatable.",
        },
    ),
    (
        ("--worker-timeout",),
        {
            "help": f"Seconds without a heartbeat before a worker is down (default "
            f"{DEFAULT_WORKER_TIMEOUT:g})."
        },
    ),
    (
        ("--purge-offline-after",),
        {
            "help": f"Seconds without a heartbeat before a worker's series are dropped (default "
            f"{DEFAULT_PURGE_OFFLINE_AFTER:g})."
        },
    ),
    (
        ("--broker-timeout",),
        {"help": f"Seconds a scrape waits for the broker (default {DEFAULT_BROKER_TIMEOUT:g})."},
    ),
    (
        ("--event-exchange",),
        {"help": f"Exchange Celery events are sent to (default {DEFAULT_EVENT_EXCHANGE})."},
    ),
    (
        ("--web-config",),
        {"help": "Prometheus web-config file (TLS, basic auth) for the endpoint."},
    ),
    (("--log-level",), {"help": "DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)."}),
    (("--runtime-buckets",), {"help": "Runtime histogram bounds, comma-separated seconds."}),
    (("--queue-wait-buckets",), {"help": "Queue-wait histogram bounds, comma-separated seconds."}),
    (("--max-task-names",), {"help": "Cap on distinct task names (then `_other`)."}),
    (("--max-queues",), {"help": "Cap on distinct queue names (then `_other`)."}),
    (("--max-hostnames",), {"help": "Cap on distinct worker hostnames (then `_other`)."}),
    (("--max-exceptions",), {"help": "Cap on distinct exception names (then `_other`)."}),
)


class OneLineErrors(click.Command):
    """A command whose usage errors are one masked line, not click's usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(exc.format_message())


def exporter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for names, settings in reversed(_OPTIONS):
        command = click.option(*names, default=None, **settings)(command)
    return command


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    click.echo(f"Error: {mask_secrets(message)}", err=True)
    sys.exit(status)


def cli_values(options: Mapping[str, Any]) -> dict[str, Any]:
    """Click's values with unset repeatable options as None, so the environment applies."""
    return {name: (value if value != () else None) for name, value in options.items()}


def run_exporter(settings: ExporterSettings, app: Any = None) -> None:
    configure_logging(settings.log_level)
    try:
        exporter = Exporter(settings, app)
    except ImportError as exc:  # kombu knows the transport, but its client library is missing
        scheme = settings.broker_url.split("://", 1)[0]
        fail(f"the {scheme!r} transport needs a client library that is not installed ({exc})")
    try:
        exporter.bind()
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(exc.strerror or str(exc), CANNOT_LISTEN)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: exporter.stop())
    exporter.run()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)


@click.group(name="celery-prom", cls=click.Group)
def cli() -> None:
    """Prometheus metrics for Celery."""


@cli.command(name="exporter", cls=OneLineErrors)
@exporter_options
def exporter(**options: Any) -> None:
    """Serve queue lengths, worker liveness and task metrics from the broker."""
    try:
        settings = ExporterSettings.resolve(
            Source(cli=cli_values(options), env=os.environ, conf={})
        )
    except ConfigError as exc:
        fail(str(exc))
    run_exporter(settings)


@click.command(name="prom", cls=OneLineErrors)
@exporter_options
@click.pass_context
def prom(ctx: click.Context, /, **options: Any) -> None:
    """Run the celery-prom exporter for this app (its broker, transport options, queues)."""
    app = ctx.obj.app
    try:
        settings = ExporterSettings.resolve(
            Source(cli=cli_values(options), env=os.environ, conf=app.conf),
            default_broker_url=app.connection_for_read().as_uri(include_password=True),
            default_queues=app_queue_names(app),
            default_transport_options=app.conf.broker_transport_options,
            default_event_exchange=app.conf.event_exchange or DEFAULT_EVENT_EXCHANGE,
        )
    except ConfigError as exc:
        fail(str(exc))
    run_exporter(settings, app)


cli.add_command(demo)


def app_queue_names(app: Any) -> Sequence[str]:
    """The task queues the app declares (its default queue when it declares none)."""
    return [str(name) for name in app.amqp.queues]


def main(args: Sequence[str] | None = None) -> None:
    """The ``celery-prom`` console script."""
    try:
        cli.main(
            args=list(args) if args is not None else None,
            prog_name="celery-prom",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        fail(exc.format_message())
