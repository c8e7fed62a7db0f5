"""``install(app)``: the one line that instruments a Celery app."""

from __future__ import annotations

from typing import Any

import click

from celery_prom.cli.errors import OptionError
from celery_prom.config import Setting, mask_secrets, worker_endpoint_settings


def install(app: Any) -> None:
    """Add the metrics steps and options to ``app``'s workers and beat, and instrument its
    producers.

    Safe to call more than once.
    """
    # Imported on use, not with the package: see celery_prom/__init__.py.
    from celery_prom.beat import instrument_beat  # noqa: PLC0415
    from celery_prom.bootsteps import PrometheusServer, TaskEventTap  # noqa: PLC0415
    from celery_prom.producer import instrument_producers  # noqa: PLC0415

    app.steps["worker"].add(PrometheusServer)
    app.steps["consumer"].add(TaskEventTap)
    instrument_beat(app)
    for command in ("worker", "beat"):
        options = app.user_options[command]
        if not any(getattr(option, "name", None) == "prom_port" for option in options):
            options.update(worker_endpoint_settings(_CommandOption, command))
    instrument_producers()


class _CommandOption(Setting):
    """A ``celery worker`` or ``celery beat`` option, listed under its own heading (Celery's
    ``CeleryCommand`` and ``CeleryDaemonCommand`` group options by ``help_group``; checked on
    Celery 5.3 to 5.7)."""

    help_group = "celery-prom Options"

    def type_cast_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().type_cast_value(ctx, value)
        except click.BadParameter as exc:
            # The command would print its usage block with a usage error: one line instead.
            raise OptionError(mask_secrets(f"celery-prom: {exc.format_message()}")) from None
