"""Errors as the command line shows them: one line, exit status 2, no usage block, no
password."""

from __future__ import annotations

import click
from click.testing import CliRunner

from celery_prom.cli.errors import OneLineErrors, OptionError


@click.command()
def _command() -> None:
    raise OptionError("--port: 'abc' is not a port number")


def test_option_error_is_one_line_with_exit_status_2() -> None:
    result = CliRunner().invoke(_command, [])

    assert result.exit_code == 2
    assert result.output == "Error: --port: 'abc' is not a port number\n"


@click.command(cls=OneLineErrors)
@click.option("--port", type=click.IntRange(1, 65535))
def _typed(port: int) -> None:
    """Never runs: its option is always bad here."""


def test_a_usage_error_is_one_masked_line_with_exit_status_2() -> None:
    result = CliRunner().invoke(_typed, ["--port", "redis://:hunter2@db/0"])

    assert result.exit_code == 2
    assert result.output == (
        "Error: Invalid value for '--port': 'redis://:**@db/0' is not a valid integer range.\n"
    )
