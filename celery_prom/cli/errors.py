"""Errors as the command line shows them: one line, no traceback, no password."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from celery_prom.config import mask_secrets

USAGE_ERROR = 2


class OptionError(click.ClickException):
    """A bad option value: printed as ``Error: <message>``, exit status 2.

    Unlike ``click.UsageError`` it never prints the usage block, so the error is one line
    even when raised from inside a running command (such as ``celery worker``).
    """

    exit_code = USAGE_ERROR


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
