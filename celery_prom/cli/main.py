"""``celery-prom exporter`` and its twin ``celery -A proj prom``.

Their options are ``config.Setting``s: click reads each from the command line, else from
``CELERY_PROM_<OPTION>``, else (for ``celery prom``) from the app's ``celery_prom_<option>``,
and its type checks the value wherever it came from. Errors are printed as one line, with any
URL password masked, and exit with 2; a port the exporter cannot listen on (taken, or not
allowed) exits with 1, as a worker does.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click

from celery_prom.cli.demo import demo
from celery_prom.cli.errors import OneLineErrors, fail
from celery_prom.cli.monitoring import monitoring
from celery_prom.config import (
    ConfigError,
    ExporterSettings,
    MaskingFormatter,
    exporter_options,
)

CANNOT_LISTEN = 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_exporter(settings: ExporterSettings, app: Any = None) -> None:
    # Imported on use, not with the entry point: see celery_prom/__init__.py.
    from celery_prom.exporter.service import Exporter  # noqa: PLC0415

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


@cli.command(name="exporter", cls=OneLineErrors, params=exporter_options())
def exporter(**options: Any) -> None:
    """Serve queue lengths, worker liveness and task metrics from the broker."""
    try:
        settings = ExporterSettings.from_options(options)
    except ConfigError as exc:
        fail(str(exc))
    run_exporter(settings)


@click.command(name="prom", cls=OneLineErrors, params=exporter_options())
@click.pass_context
def prom(ctx: click.Context, /, **options: Any) -> None:
    """Run the celery-prom exporter for this app (its broker, transport options, queues)."""
    app = ctx.obj.app
    try:
        settings = ExporterSettings.from_options(
            options,
            default_broker_url=app.connection_for_read().as_uri(include_password=True),
            default_queues=app_queue_names(app),
            default_transport_options=app.conf.broker_transport_options,
        )
    except ConfigError as exc:
        fail(str(exc))
    run_exporter(settings, app)


cli.add_command(demo)
cli.add_command(monitoring)


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
