"""A bad option as the command line shows it: one line, exit status 2, no usage block."""

from __future__ import annotations

import click
from click.testing import CliRunner

from celery_prom.cli.errors import OptionError


@click.command()
def _command() -> None:
    raise OptionError("--port: 'abc' is not a port number")


def test_option_error_is_one_line_with_exit_status_2() -> None:
    result = CliRunner().invoke(_command, [])

    assert result.exit_code == 2
    assert result.output == "Error: --port: 'abc' is not a port number\n"
