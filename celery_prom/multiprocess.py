"""User metrics from prefork pool children: prometheus_client's multiprocess mode, managed.

With ``PROMETHEUS_MULTIPROC_DIR`` in the worker's environment, every process of the worker
writes its prometheus_client values to its own files there (``counter_<pid>.db``,
``gauge_livesum_<pid>.db``...). The worker's main process owns the directory:

* it locks it (one worker per directory) and wipes it when the worker starts, before the
  pool forks;
* it finds dead processes from the directory itself: every file names the process that
  writes it, and a pid that no longer exists (``kill(pid, 0)``) has exited and been reaped.
  That covers recycled children (``--max-tasks-per-child``), SIGKILLed ones (which never run
  ``worker_process_shutdown``) and processes the tasks started themselves, without racing
  billiard for the exit status;
* it folds a dead process's files into one archive file per kind (``counter_archive.db``,
  ``gauge_max_archive.db``...), so a scrape reads the archive plus the live processes'
  files however many children have come and gone. Live-mode gauges of dead processes are
  dropped, as ``prometheus_client.multiprocess.mark_process_dead`` does; ``all``-mode gauges
  keep one series per process that ever set them, so their files stay.

Archives use prometheus_client's own file format and naming, so the directory can still be
read by ``prometheus_client.multiprocess.MultiProcessCollector``. Compaction and scrapes run
in the main process only and take turns under one lock: a scrape never sees a dead
process's values both in its file and in the archive, nor in neither.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import values
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from celery_prom.faults import MULTIPROCESS, Faults

logger = logging.getLogger(__name__)

#: The variable prometheus_client reads when it is first imported (the lower-case name is
#: its deprecated spelling, still honoured).
ENV_VARS = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
#: Held (``lockf``) by the worker's main process while it owns the directory.
LOCK_FILE = "celery-prom.lock"
#: Where the files name their process, archives name this instead.
ARCHIVE_OWNER = "archive"
#: How often the main process looks for dead processes between scrapes.
DEFAULT_COMPACT_INTERVAL = 2.0

_DB_SUFFIX = ".db"
_TMP_SUFFIX = ".tmp"

#: (value, timestamp) as prometheus_client stores them; the timestamp only matters to
#: ``mostrecent`` gauges.
Entry = tuple[float, float]
Merge = Callable[[Entry, Entry], Entry]


def _add(old: Entry, new: Entry) -> Entry:
    return old[0] + new[0], 0.0


def _larger(old: Entry, new: Entry) -> Entry:
    return new if new[0] > old[0] else old


def _smaller(old: Entry, new: Entry) -> Entry:
    return new if new[0] < old[0] else old


def _more_recent(old: Entry, new: Entry) -> Entry:
    return new if new[1] > old[1] else old


#: Kinds of file whose dead processes' values live on, and how two of them combine.
#: Histogram buckets are stored per bucket (not cumulative), so they add up like counters.
MERGERS: Mapping[str, Merge] = {
    "counter": _add,
    "histogram": _add,
    "summary": _add,
    "gauge_sum": _add,
    "gauge_max": _larger,
    "gauge_min": _smaller,
    "gauge_mostrecent": _more_recent,
}
#: Kinds of file whose values die with their process.
DROPPED_WITH_PROCESS = frozenset(
    f"gauge_{mode}" for mode in ("liveall", "livesum", "livemax", "livemin", "livemostrecent")
)


class SetupError(Exception):
    """Multiprocess mode cannot work as set up; the message is one line fit for the user."""


def prometheus_client_is_multiprocess() -> bool:
    """Whether prometheus_client chose multiprocess mode when it was imported."""
    return bool(values.ValueClass._multiprocess)


def configured_directory(env: Mapping[str, str], multiprocess: bool) -> str | None:
    """The multiprocess directory, ``None`` if the mode is off, or why it cannot work.

    prometheus_client decides once, at import, whether values go to files; a variable set
    later (say in the app module, after ``import celery``) changes nothing but this check.
    """
    name, directory = next(((n, env[n]) for n in ENV_VARS if n in env), (ENV_VARS[0], None))
    if directory is None and not multiprocess:
        return None
    if not multiprocess:
        raise SetupError(
            f"{name} was set after prometheus_client was imported; set it in the worker's "
            "environment before Python starts"
        )
    if not directory:
        raise SetupError(
            f"prometheus_client is in multiprocess mode but {name} is empty or was unset "
            "after it was imported"
        )
    return directory


class DirectoryLock:
    """An exclusive POSIX lock on a file, held by this process only (children never hold
    ``lockf`` locks, and the kernel releases it when the process dies, however it dies)."""

    def __init__(self, path: Path, describe: str) -> None:
        try:
            self._file = path.open("a+")
        except OSError as exc:
            raise SetupError(f"{describe} is not writable ({exc.strerror})") from None
        try:
            fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip()
            self._file.close()
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise SetupError(
                f"{describe} is in use by another worker{by}; give each worker a directory "
                "of its own"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        self._file.close()


class MultiprocessDirectory:
    """A multiprocess directory owned by this process: wiped, compacted and aggregated."""

    def __init__(self, path: Path, owner_pid: int) -> None:
        self.path = path
        self._owner_pid = owner_pid
        self._lock = threading.Lock()
        #: Dead files already merged into an archive whose removal failed; never read again.
        self._absorbed: set[str] = set()

    def wipe(self) -> None:
        """Remove every metric file but those this process has open already.

        The app module is imported before the worker starts, and metrics without labels
        open their process's files right away; removing those would leave this process
        writing to files no scrape reads.
        """
        keep = _open_files()
        for entry in os.scandir(self.path):
            if not entry.name.endswith((_DB_SUFFIX, _DB_SUFFIX + _TMP_SUFFIX)):
                continue
            if _owner(entry.name) == str(self._owner_pid):
                stat = entry.stat()
                if keep is None or (stat.st_dev, stat.st_ino) in keep:
                    continue
            _remove(Path(entry.path))

    def collect(self) -> Iterator[Metric]:
        """Every process's metrics, aggregated as prometheus_client defines per kind."""
        with self._lock:
            self._compact()
            # A file is empty for a moment after its process created it: no values yet.
            files = [entry.path for entry in self._metric_files() if entry.stat().st_size]
            merged: Iterable[Metric] = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
                files, accumulate=True
            )
        yield from merged

    def compact(self) -> None:
        """Fold the files of processes that have exited into the archives."""
        with self._lock:
            self._compact()

    def _metric_files(self) -> list[os.DirEntry[str]]:
        return [
            entry
            for entry in os.scandir(self.path)
            if entry.name.endswith(_DB_SUFFIX) and entry.name not in self._absorbed
        ]

    def _compact(self) -> None:
        dead: dict[str, list[Path]] = defaultdict(list)
        for entry in self._metric_files():
            owner = _owner(entry.name)
            if owner.isdigit() and int(owner) != self._owner_pid and not _exists(int(owner)):
                if entry.stat().st_size:
                    dead[_kind(entry.name)].append(Path(entry.path))
                else:  # killed while creating it: it never held a value
                    _remove(Path(entry.path))
        for kind, paths in dead.items():
            merge = MERGERS.get(kind)
            if merge is not None:
                self._archive(kind, paths, merge)
            elif kind in DROPPED_WITH_PROCESS:
                for path in paths:
                    _remove(path)
        self._retry_removals()

    def _archive(self, kind: str, paths: list[Path], merge: Merge) -> None:
        archive = self.path / f"{kind}_{ARCHIVE_OWNER}{_DB_SUFFIX}"
        entries = dict(_read(archive)) if archive.exists() else {}
        for path in paths:
            for key, entry in _read(path):
                old = entries.get(key)
                entries[key] = entry if old is None else merge(old, entry)
        _write_atomically(archive, entries)
        # From here the archive holds these files' values: they must never be read again.
        self._absorbed.update(path.name for path in paths)
        for path in paths:
            if _remove(path):
                self._absorbed.discard(path.name)

    def _retry_removals(self) -> None:
        for name in list(self._absorbed):
            if _remove(self.path / name):
                self._absorbed.discard(name)


class MultiprocessMetrics:
    """What the worker's endpoint serves besides its own families in multiprocess mode.

    The aggregated directory stands in for prometheus_client's default registry, whose
    metrics are only this process's share; the main process's own process metrics
    (``process_*``, ``python_*``) are served as they are.
    """

    def __init__(
        self,
        directory: MultiprocessDirectory,
        lock: DirectoryLock,
        process_collectors: Iterable[Collector],
        faults: Faults,
        compact_interval: float = DEFAULT_COMPACT_INTERVAL,
    ) -> None:
        self.directory = directory
        self._lock = lock
        self._process_collectors = tuple(process_collectors)
        self._faults = faults
        self._interval = compact_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def claim(
        cls,
        directory: str,
        process_collectors: Iterable[Collector],
        faults: Faults,
        compact_interval: float = DEFAULT_COMPACT_INTERVAL,
    ) -> MultiprocessMetrics:
        """Lock and wipe ``directory`` for this process, or raise ``SetupError``."""
        path = Path(directory)
        describe = f"{ENV_VARS[0]}={directory}"
        if not path.is_dir():
            raise SetupError(f"{describe} is not a directory")
        lock = DirectoryLock(path / LOCK_FILE, describe)
        owned = MultiprocessDirectory(path, os.getpid())
        owned.wipe()
        return cls(owned, lock, process_collectors, faults, compact_interval)

    def collect(self) -> Iterator[Metric]:
        yield from self.directory.collect()
        for collector in self._process_collectors:
            yield from collector.collect()

    def start(self) -> None:
        """Compact in the background too, so files do not pile up when nobody scrapes."""
        logger.info("celery-prom: serving the metrics of every process in %s", self.directory.path)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._compact_until_stopped, name="celery-prom-compaction", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._lock.release()

    def _compact_until_stopped(self) -> None:
        while not self._stopping.wait(self._interval):
            # A dead thread would stop compaction for good. Nothing is lost by a failure:
            # files stay until they are in an archive, and the next round retries.
            with self._faults.contained(MULTIPROCESS):
                self.directory.compact()


def _owner(name: str) -> str:
    """The process a metric file belongs to: ``gauge_livesum_123.db`` -> ``123``."""
    return name.rsplit(".", 1)[0].rpartition("_")[2]


def _kind(name: str) -> str:
    """``counter``, ``histogram``, ``summary`` or ``gauge_<mode>``."""
    return name.rsplit(".", 1)[0].rpartition("_")[0]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now has that pid
        return True
    return True


def _open_files() -> set[tuple[int, int]] | None:
    """(device, inode) of every file this process has open; ``None`` where unknown."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return None
    opened = set()
    for fd in fds.iterdir():
        try:
            stat = fd.stat()
        except OSError:  # the descriptor used for listing, or closed meanwhile
            continue
        opened.add((stat.st_dev, stat.st_ino))
    return opened


def _read(path: Path) -> Iterator[tuple[str, Entry]]:
    values_in_file = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
    for key, value, timestamp, _ in values_in_file:
        yield key, (value, timestamp)


def _write_atomically(path: Path, entries: Mapping[str, Entry]) -> None:
    """Replace ``path`` in one rename, so it is read either whole and new or whole and old."""
    temporary = path.with_name(path.name + _TMP_SUFFIX)
    _remove(temporary)
    mapped = MmapedDict(str(temporary))  # type: ignore[no-untyped-call]
    try:
        for key, (value, timestamp) in entries.items():
            mapped.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        mapped.close()  # type: ignore[no-untyped-call]
    os.replace(temporary, path)


def _remove(path: Path) -> bool:
    """Whether ``path`` is gone (a failure is logged, and the caller retries later)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("celery-prom: cannot remove %s: %s", path, exc)
        return False
    return True
