"""The tree's layers: imports point down only, cli -> feeds (bootsteps/, exporter/) -> core.

The core (the modules at the top of ``celery_prom``) knows no feed; the worker feed
(``bootsteps``) and the broker feed (``exporter``) know the core but not each other; only
the entry points (the command line, the demo, ``install`` and the package itself) may import
everything. Read from the source with ``ast``, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

PACKAGE = REPO / "celery_prom"
ENTRY = "entry"
CORE = "core"
#: What each layer may import besides itself.
BELOW: dict[str, frozenset[str]] = {
    CORE: frozenset(),
    "bootsteps": frozenset({CORE}),
    "exporter": frozenset({CORE}),
    ENTRY: frozenset({CORE, "bootsteps", "exporter"}),
}
#: The package root is the public API, which puts it on top; its version string is data
#: any layer may read.
ROOT_DATA = frozenset({"__version__"})


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "demo", "install"):
        return ENTRY
    if parts[1] in ("bootsteps", "exporter"):
        return parts[1]
    return CORE


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.joinpath("__init__.py").is_file()


def imported(module: str, source: str) -> list[str]:
    """The celery_prom modules ``source`` imports (``from package import name`` counts
    ``package.name`` where that is a module, else ``package``)."""
    found: list[str] = []
    package = module if is_module(f"{module}.__init__") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                if alias.name in ROOT_DATA and base == "celery_prom":
                    continue
                candidate = f"{base}.{alias.name}"
                found.append(candidate if is_module(candidate) else base)
    return [name for name in found if name.split(".")[0] == "celery_prom"]


def upward_imports(module: str, source: str) -> list[str]:
    own = layer(module)
    return [
        name
        for name in imported(module, source)
        if layer(name) != own and layer(name) not in BELOW[own]
    ]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_point_down_only(path: Path) -> None:
    module = module_name(path)

    assert upward_imports(module, path.read_text()) == []


@pytest.mark.parametrize(
    ("module", "source", "upward"),
    [
        (
            "celery_prom.store",
            "from celery_prom.exporter import broker",
            ["celery_prom.exporter.broker"],
        ),
        ("celery_prom.store", "import celery_prom.bootsteps.tap", ["celery_prom.bootsteps.tap"]),
        ("celery_prom.metrics", "from celery_prom import install", ["celery_prom.install"]),
        (
            "celery_prom.http",
            "def f():\n    from celery_prom.cli import main",
            ["celery_prom.cli.main"],
        ),
        (
            "celery_prom.bootsteps.server",
            "from celery_prom.cli.errors import OptionError",
            ["celery_prom.cli.errors"],
        ),
        (
            "celery_prom.bootsteps.tap",
            "from celery_prom.exporter.router import EventRouter",
            ["celery_prom.exporter.router"],
        ),
        (
            "celery_prom.exporter.service",
            "from ..bootsteps import server",
            ["celery_prom.bootsteps.server"],
        ),
        ("celery_prom.exporter.router", "from celery_prom import cli", ["celery_prom.cli"]),
        ("celery_prom.bootsteps.worker_state", "from celery_prom import __version__, metrics", []),
        ("celery_prom.exporter.router", "from celery_prom.recorder import Recorder", []),
        ("celery_prom.cli.main", "from celery_prom.exporter.service import Exporter", []),
    ],
)
def test_upward_imports_are_found(module: str, source: str, upward: list[str]) -> None:
    assert upward_imports(module, source) == upward
