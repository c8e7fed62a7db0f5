"""What beat's metrics are made of at one moment, and its JSON form.

The collector renders a snapshot; a worker run with ``-B`` reads the one its embedded beat
process writes (see ``embedded``), so a snapshot must survive a trip through JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_prom.store import Histogram

#: (entry, task name) -> count.
EntryCounts = Mapping[tuple[str, str], int]


@dataclass(frozen=True)
class EntryFacts:
    """One schedule entry as the scheduler holds it now."""

    entry: str
    #: The task it sends.
    name: str
    next_run: float | None
    last_run: float | None


@dataclass(frozen=True)
class BeatSnapshot:
    scheduler: str
    #: When the scheduler last finished a tick; ``None`` before its first.
    tick: float | None = None
    sent: EntryCounts = field(default_factory=dict)
    errors: EntryCounts = field(default_factory=dict)
    #: Per entry, lateness observations in the catalogue's buckets.
    lateness: Mapping[str, Histogram] = field(default_factory=dict)
    #: The schedule; ``None`` while the scheduler has not ticked (such as a RedBeat
    #: instance waiting for the lock), so it reports no schedule of its own.
    entries: tuple[EntryFacts, ...] | None = None
    #: celery-prom's own errors in this beat, by component: (count, last reason).
    faults: Mapping[str, tuple[int, str | None]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "scheduler": self.scheduler,
                "tick": self.tick,
                "sent": _counts_to_json(self.sent),
                "errors": _counts_to_json(self.errors),
                "lateness": [
                    [entry, histogram.buckets, histogram.sum]
                    for entry, histogram in self.lateness.items()
                ],
                "entries": None
                if self.entries is None
                else [
                    [facts.entry, facts.name, facts.next_run, facts.last_run]
                    for facts in self.entries
                ],
                "faults": [[name, count, reason] for name, (count, reason) in self.faults.items()],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> BeatSnapshot:
        data = json.loads(text)
        return cls(
            scheduler=data["scheduler"],
            tick=data["tick"],
            sent=_counts_from_json(data["sent"]),
            errors=_counts_from_json(data["errors"]),
            lateness={
                entry: _histogram(buckets, total) for entry, buckets, total in data["lateness"]
            },
            entries=None
            if data["entries"] is None
            else tuple(EntryFacts(*facts) for facts in data["entries"]),
            faults={name: (count, reason) for name, count, reason in data["faults"]},
        )


def _counts_to_json(counts: EntryCounts) -> list[list[Any]]:
    return [[entry, name, count] for (entry, name), count in counts.items()]


def _counts_from_json(rows: list[list[Any]]) -> dict[tuple[str, str], int]:
    return {(entry, name): count for entry, name, count in rows}


def _histogram(buckets: list[int], total: float) -> Histogram:
    histogram = Histogram(0)
    histogram.buckets = list(buckets)
    histogram.sum = total
    return histogram
