"""``celery-prom monitoring export DIR``: the monitoring bundle, out of the installed package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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

Decorated = Callable[..., Any]


def job_option(flag: str, default: str, scraped: str) -> Callable[[Decorated], Decorated]:
    return click.option(
        flag, type=JobName(), default=default, show_default=True, help=f"Scrape job of {scraped}."
    )


@click.group(name="monitoring")
def monitoring() -> None:
    """The Prometheus rules, scrape configs, Grafana dashboards and Kubernetes manifests."""


@monitoring.command(name="export", cls=OneLineErrors)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@job_option("--worker-job", DEFAULT_WORKER_JOB, "the workers")
@job_option("--exporter-job", DEFAULT_EXPORTER_JOB, "the exporter")
@click.option(
    "--exporter-address",
    type=Address(),
    default=DEFAULT_EXPORTER_ADDRESS,
    show_default=True,
    help="Where Prometheus scrapes the exporter and reads its /sd/workers "
    "(prometheus.yml, prometheus-ha.yml).",
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
