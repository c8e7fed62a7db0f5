"""The CI matrix of ``.ci/matrix``: its legs, the pins each is installed with, the README table.

Standard library only: ``.ci/run`` runs it with whatever Python the machine has, before any
venv exists.

python -m tools.ci_matrix legs               # "leg python [pytest -m expression]" per line
python -m tools.ci_matrix constraints LEG    # the pip constraints LEG is installed with
python -m tools.ci_matrix table [--write]    # the README's supported-versions table
"""

from __future__ import annotations

import argparse
import configparser
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / ".ci" / "matrix"
SETUP_CFG = ROOT / "setup.cfg"
README = ROOT / "README.md"
SECTION = "## Supported versions"
#: The pins of a leg that takes every install_requires bound of setup.cfg as an exact pin.
LOWEST = "lowest"
#: What a leg's ``tests`` names: a pytest ``-m`` expression (empty: every test) and the
#: README's words for it.
SELECTIONS = {
    "all": ("", "whole suite"),
    "all_but_style": ("not style", "whole suite but the style gates"),
    "core": (
        "not slow and not style and not sqs",
        "the suite's core (all but the slow end-to-end tests, the style gates and SQS)",
    ),
    "celery_internals": ("celery_internals", "tests of Celery's internals"),
    "celery_internals_but_sqs": (
        "celery_internals and not sqs",
        "tests of Celery's internals but SQS",
    ),
}
#: The table's version columns and the distribution each shows.
COLUMNS = {
    "Celery": "celery",
    "kombu": "kombu",
    "redis-py": "redis",
    "prometheus-client": "prometheus-client",
}
BROKER_NAMES = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
_LOWER_BOUND = re.compile(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([0-9][0-9.]*)$")


@dataclass(frozen=True)
class Leg:
    name: str
    python: str
    tests: str
    #: pip constraints: ``name==version`` each, or ``[LOWEST]``.
    pins: tuple[str, ...]

    @property
    def lowest(self) -> bool:
        return self.pins == (LOWEST,)

    def constraints(self) -> list[str]:
        if self.lowest:
            return [f"{name}=={bound}" for name, bound in lower_bounds().items()]
        return list(self.pins)

    def versions(self) -> dict[str, str]:
        """Each pinned distribution's version as the table shows it (5.3.* is 5.3.x)."""
        if self.lowest:
            return {name: _full(bound) for name, bound in lower_bounds().items()}
        pairs = (pin.split("==", 1) for pin in self.pins)
        return {name: version.replace("*", "x") for name, version in pairs}


@dataclass(frozen=True)
class Matrix:
    legs: tuple[Leg, ...]
    #: Broker name (``redis``, ``rabbitmq``) to the major.minor every leg runs against.
    brokers: dict[str, str]

    def leg(self, name: str) -> Leg:
        for leg in self.legs:
            if leg.name == name:
                return leg
        raise SystemExit(f"{MATRIX}: no leg named {name!r}")


def load(text: str | None = None) -> Matrix:
    """The matrix in ``text`` (by default, the one in ``.ci/matrix``)."""
    legs: list[Leg] = []
    brokers: dict[str, str] = {}
    for line in (MATRIX.read_text() if text is None else text).splitlines():
        kind, *fields = line.split("#", 1)[0].split() or [""]
        if kind == "leg" and len(fields) >= 4 and fields[2] in SELECTIONS:
            legs.append(Leg(fields[0], fields[1], fields[2], tuple(fields[3:])))
        elif kind == "brokers" and fields and len(fields) % 2 == 0:
            brokers = dict(zip(fields[::2], fields[1::2], strict=True))
        elif kind:
            raise ValueError(f"{MATRIX}: cannot read {line!r}")
    return Matrix(tuple(legs), brokers)


def lower_bounds() -> dict[str, str]:
    """setup.cfg's install_requires as distribution name -> lower bound, extras dropped."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    bounds: dict[str, str] = {}
    for requirement in config["options"]["install_requires"].split():
        match = _LOWER_BOUND.match(requirement)
        if match is None:
            raise ValueError(f"{SETUP_CFG}: {requirement!r} is not name>=version")
        bounds[match[1]] = match[2]
    return bounds


def render(matrix: Matrix) -> str:
    """The README's table: one row per leg."""
    brokers = ", ".join(f"{BROKER_NAMES[name]} {v}" for name, v in matrix.brokers.items())
    rows = [
        "| " + " | ".join([*COLUMNS, "Python", "brokers", "CI runs"]) + " |",
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for leg in matrix.legs:
        versions = leg.versions()
        runs = SELECTIONS[leg.tests][1]
        if leg.lowest:
            runs += ", every dependency at its lowest declared version"
        cells = [versions[name] for name in COLUMNS.values()]
        rows.append("| " + " | ".join([*cells, leg.python, brokers, runs]) + " |")
    return "\n".join(rows) + "\n"


def current_table(readme: str) -> str:
    """The table lines of the README's supported-versions section."""
    _, found, rest = readme.partition(f"\n{SECTION}\n")
    lines = rest.split("\n## ", 1)[0].splitlines()
    table = "".join(f"{line}\n" for line in lines if line.startswith("|"))
    if not (found and table):
        raise SystemExit(f"README.md has no table under {SECTION!r}")
    return table


def _full(version: str) -> str:
    """A bound as pip reads it in ``==``: 5.3 is 5.3.0."""
    parts = version.split(".")
    return ".".join(parts + ["0"] * (3 - len(parts)))


def main() -> None:
    parser = argparse.ArgumentParser(description="Read the CI matrix in .ci/matrix.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("legs", help="print each leg's name, Python and pytest -m expression")
    constraints = commands.add_parser("constraints", help="print a leg's pip constraints")
    constraints.add_argument("leg")
    table = commands.add_parser("table", help="print the README's supported-versions table")
    table.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    matrix = load()
    if args.command == "legs":
        for leg in matrix.legs:
            print(leg.name, leg.python, SELECTIONS[leg.tests][0])
    elif args.command == "constraints":
        print("\n".join(matrix.leg(args.leg).constraints()))
    elif args.write:
        readme = README.read_text()
        README.write_text(readme.replace(current_table(readme), render(matrix), 1))
    else:
        print(render(matrix), end="")


if __name__ == "__main__":
    main()
