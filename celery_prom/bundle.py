"""The monitoring bundle shipped in the package, and writing it out with a deployment's names.

The bundle is the repository's ``monitoring/`` directory: Prometheus scrape configs, recording
and alert rules, threshold examples, Grafana dashboards and Kubernetes manifests.
``celery_prom/monitoring`` links to it and setup.cfg ships it as package data, so one copy
serves the repository, ``pip install -e .`` and the wheel. Its ``tests/`` (promtool unit tests
of the rules, written for the default job names) stay in the repository.

Job names and the exporter's address are options because the files name them in several
places (scrape configs, alert expressions, dashboard queries, the Kubernetes monitors'
relabelings); exporting with other values rewrites exactly those places.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from celery_prom.config import DEFAULT_PORT

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

DEFAULT_WORKER_JOB = "celery-worker"
DEFAULT_EXPORTER_JOB = "celery-exporter"
DEFAULT_EXPORTER_ADDRESS = f"celery-exporter:{DEFAULT_PORT}"
#: Folders of monitoring/ that are not part of the bundle (setup.cfg leaves them out too).
REPOSITORY_ONLY = frozenset({"tests"})
#: The alerts' selector for "any celery job": CeleryScrapeTargetDown watches these jobs.
_CELERY_JOBS = 'job=~"celery-.*"'


@dataclass(frozen=True)
class Names:
    """The names a deployment gives the scrape jobs and the exporter's address."""

    worker_job: str = DEFAULT_WORKER_JOB
    exporter_job: str = DEFAULT_EXPORTER_JOB
    exporter_address: str = DEFAULT_EXPORTER_ADDRESS


def bundle_root() -> Traversable:
    return files("celery_prom") / "monitoring"


def bundle_files() -> Iterator[tuple[PurePosixPath, Traversable]]:
    """Every file of the bundle with its path relative to the bundle, in sorted order."""
    yield from _walk(bundle_root(), PurePosixPath())


def _walk(
    folder: Traversable, relative: PurePosixPath
) -> Iterator[tuple[PurePosixPath, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        path = relative / entry.name
        if entry.is_dir():
            if path.as_posix() not in REPOSITORY_ONLY:
                yield from _walk(entry, path)
        else:
            yield path, entry


def rename(text: str, names: Names) -> str:
    """A bundle file's text with the deployment's job names and exporter address."""
    for pattern, replace in _substitutions(names):
        text = pattern.sub(replace, text)
    return text


def _substitutions(names: Names) -> list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]:
    def keep_around(new: str) -> Callable[[re.Match[str]], str]:
        return lambda match: f"{match.group(1)}{new}{match.group(2)}"

    substitutions: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = []
    for default, new in (
        (DEFAULT_WORKER_JOB, names.worker_job),
        (DEFAULT_EXPORTER_JOB, names.exporter_job),
    ):
        old = re.escape(default)
        substitutions += [
            # PromQL matchers, also inside JSON strings (dashboards), where quotes are escaped.
            (re.compile(rf'(\bjob!?=\\?"){old}(\\?")'), keep_around(new)),
            # Scrape configs.
            (re.compile(rf"^(\s*-?\s*job_name: ){old}()$", re.M), keep_around(new)),
            # The Kubernetes monitors set the job label with a relabeling.
            (re.compile(rf"^(\s*replacement: ){old}()$", re.M), keep_around(new)),
        ]
    if not re.fullmatch("celery-.*", names.exporter_job):
        extended = f'job=~"celery-.*|{names.exporter_job}"'
        substitutions.append((re.compile(re.escape(_CELERY_JOBS)), lambda _: extended))
    address = re.escape(DEFAULT_EXPORTER_ADDRESS)
    # A bare [ would start a YAML list.
    target = names.exporter_address
    quoted = f'"{target}"' if target.startswith("[") else target
    substitutions.append((re.compile(rf"^(\s*- ){address}()$", re.M), keep_around(quoted)))
    # The exporter's /sd/workers, in an http_sd_configs url.
    substitutions.append((re.compile(rf"(//){address}(/)"), keep_around(target)))
    return substitutions


class NotEmptyError(Exception):
    """The export directory holds files already (and overwriting was not asked for)."""


def export(directory: Path, names: Names, *, force: bool = False) -> list[PurePosixPath]:
    """Write the bundle into ``directory``; the paths written, relative to it.

    A directory that exists and is not empty is refused unless ``force``: then the bundle's
    files are overwritten and every other file in it is left alone.
    """
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise NotEmptyError(f"{directory} is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for relative, source in bundle_files():
        target = directory.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = rename(source.read_bytes().decode("utf-8"), names)
        target.write_bytes(text.encode("utf-8"))
        written.append(relative)
    return written
