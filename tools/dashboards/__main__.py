"""Write the dashboards to monitoring/dashboards/, or check that the committed ones match."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tools.dashboards import overview, task
from tools.dashboards.grafana import JSON

OUTPUT = Path(__file__).resolve().parents[2] / "monitoring" / "dashboards"
DASHBOARDS: dict[str, Callable[[], JSON]] = {
    "celery-overview.json": overview.build,
    "celery-task.json": task.build,
}


def render(build: Callable[[], JSON]) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def stale(directory: Path) -> list[str]:
    """Dashboard files in ``directory`` that differ from what the code builds."""
    return [
        name
        for name, build in DASHBOARDS.items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != render(build)
    ]


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (directory / name).write_text(render(build), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dashboards", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files differ from the generated ones"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="directory of the files")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale(args.output)
        for name in differing:
            print(
                f"{args.output / name} is out of date: run python -m tools.dashboards",
                file=sys.stderr,
            )
        return 1 if differing else 0
    write(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
