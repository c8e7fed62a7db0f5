"""``celery-prom monitoring export DIR``: the monitoring bundle, out of the installed package."""

from __future__ import annotations

from pathlib import Path

import click

from celery_prom.bundle import (
    DEFAULT_EXPORTER_ADDRESS,
    DEFAULT_EXPORTER_JOB,
    DEFAULT_WORKER_JOB,
    Names,
    NotEmptyError,
    export,
)
from celery_prom.cli.errors import OneLineErrors, OptionError
from celery_prom.config import Address, JobName


@click.group(name="monitoring")
def monitoring() -> None:
    """The Prometheus rules, scrape configs, Grafana dashboards and Kubernetes manifests."""


@monitoring.command(name="export", cls=OneLineErrors)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--worker-job",
    type=JobName(),
    default=DEFAULT_WORKER_JOB,
    show_default=True,
    help="Scrape job of the workers' endpoints.",
)
@click.option(
    "--exporter-job",
    type=JobName(),
    default=DEFAULT_EXPORTER_JOB,
    show_default=True,
    help="Scrape job of celery-prom exporter.",
)
@click.option(
    "--exporter-address",
    type=Address(),
    default=DEFAULT_EXPORTER_ADDRESS,
    show_default=True,
    help="Where Prometheus scrapes the exporter (prometheus.yml, prometheus-ha.yml).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into a DIRECTORY that is not empty: the bundle's files are overwritten, "
    "other files are left alone.",
)
def export_command(
    directory: Path, worker_job: str, exporter_job: str, exporter_address: str, force: bool
) -> None:
    """Write the bundle into DIRECTORY, ready for `promtool check config prometheus.yml`."""
    names = Names(worker_job, exporter_job, exporter_address)
    try:
        written = export(directory, names, force=force)
    except NotEmptyError as exc:
        raise OptionError(f"{exc}: give an empty or new directory, or --force") from None
    except OSError as exc:
        raise OptionError(f"{exc.strerror}: {exc.filename}") from None
    click.echo(f"Wrote {len(written)} files to {directory}")
