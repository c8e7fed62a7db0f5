"""``install(app)``: the one line that instruments a Celery app."""

from __future__ import annotations

from typing import Any

from celery.bin.base import CeleryOption

from celery_prom.config import DEFAULT_HOST, DEFAULT_PORT

_HELP_GROUP = "celery-prom Options"


def install(app: Any) -> None:
    """Add the metrics steps and options to ``app``'s workers and instrument its producers.

    Safe to call more than once.
    """
    # Imported on use, not with the package: see celery_prom/__init__.py.
    from celery_prom.bootsteps import PrometheusServer, TaskEventTap  # noqa: PLC0415
    from celery_prom.producer import instrument_producers  # noqa: PLC0415

    app.steps["worker"].add(PrometheusServer)
    app.steps["consumer"].add(TaskEventTap)
    options = app.user_options["worker"]
    if not any(getattr(option, "name", None) == "prom_port" for option in options):
        options.update(_worker_options())
    instrument_producers()


def _worker_options() -> list[CeleryOption]:
    # Values are validated by the step (one-line errors naming the source, whether the
    # value came from here, the environment or app.conf), so click takes them as text.
    return [
        CeleryOption(
            ["--prom-port"],
            default=None,
            help_group=_HELP_GROUP,
            help=f"Port of the worker's /metrics endpoint (default {DEFAULT_PORT}; 0 turns "
            "metrics off). Env CELERY_PROM_PORT, app.conf.celery_prom_port.",
        ),
        CeleryOption(
            ["--prom-host"],
            default=None,
            help_group=_HELP_GROUP,
            help=f"Address the endpoint listens on (default {DEFAULT_HOST}). "
            "Env CELERY_PROM_HOST, app.conf.celery_prom_host.",
        ),
        CeleryOption(
            ["--prom-web-config"],
            default=None,
            help_group=_HELP_GROUP,
            help="Prometheus web-config file (TLS, basic auth) for the endpoint. "
            "Env CELERY_PROM_WEB_CONFIG, app.conf.celery_prom_web_config.",
        ),
    ]
