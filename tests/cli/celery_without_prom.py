"""Celery's own ``celery`` command as it runs where celery-prom is not installed.

``python -m tests.cli.celery_without_prom ARGS`` is ``celery ARGS`` without celery-prom's
``celery.commands`` entry point (and so without importing ``celery_prom``); every other
plugin still loads. Celery reads its plugins once, when ``celery.bin.celery`` is imported,
with ``importlib.metadata.entry_points(group="celery.commands")``; the console script
``celery`` runs ``celery.__main__:main``, which imports it. Checked against Celery 5.3.6
and 5.7.0.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

OWN_PACKAGE = "celery_prom"

_entry_points = importlib.metadata.entry_points


def entry_points_without_prom(**params: Any) -> Any:
    found = _entry_points(**params)
    if params.get("group") != "celery.commands":
        return found
    return importlib.metadata.EntryPoints(
        point for point in found if point.module.partition(".")[0] != OWN_PACKAGE
    )


if __name__ == "__main__":
    importlib.metadata.entry_points = entry_points_without_prom
    from celery.__main__ import main

    main()
