"""Errors as the command line shows them: one line, no traceback."""

from __future__ import annotations

import click


class OptionError(click.ClickException):
    """A bad option value: printed as ``Error: <message>``, exit status 2.

    Unlike ``click.UsageError`` it never prints the usage block, so the error is one line
    even when raised from inside a running command (such as ``celery worker``).
    """

    exit_code = 2
