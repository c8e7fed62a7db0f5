"""Errors as the command line shows them: one line, no traceback, no password."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

# OptionError lives in the core, where the worker's step raises it too.
from celery_prom.config import OptionError, mask_secrets

__all__ = ["OneLineErrors", "OptionError", "fail"]

USAGE_ERROR = OptionError.exit_code


class OneLineErrors(click.Command):
    """A command whose usage errors are one masked line, not click's usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(exc.format_message())


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    click.echo(f"Error: {mask_secrets(message)}", err=True)
    sys.exit(status)
