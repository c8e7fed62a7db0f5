"""How many events were sent while the exporter was disconnected, from the senders' clocks."""

from __future__ import annotations

import threading

from celery_prom.exporter.dropped import DroppedEvents


class LossEstimator:
    """Estimates events sent while the exporter was disconnected.

    Every Celery event carries its sender's Lamport clock, which the sender advances by
    one for each event it sends. After a reconnect, the distance between a sender's last
    clock before the outage and its first one after it, less one, is the number of events
    it sent in between that never arrived. Senders also advance their clock for other
    messages (remote-control replies) and jump it forward when they receive other workers'
    events (gossip), so this is an upper bound; gaps between two events of the same
    connection are not counted, since nothing is lost while connected.
    """

    def __init__(self, dropped: DroppedEvents, max_senders: int = 10_000) -> None:
        self._dropped = dropped
        self._max_senders = max_senders
        self._last: dict[str, tuple[int, int]] = {}
        self._epoch = 0
        # The receiver observes while a scrape's purge of offline workers forgets.
        self._lock = threading.Lock()

    def new_connection(self) -> None:
        with self._lock:
            self._epoch += 1

    def forget(self, hostname: str) -> None:
        with self._lock:
            self._last.pop(hostname, None)

    def observe(self, hostname: object, clock: object) -> None:
        if type(clock) is not int or not isinstance(hostname, str):
            return
        with self._lock:
            lost = self._advance(hostname, clock)
        if lost:
            self._dropped.lost(lost)

    def _advance(self, hostname: str, clock: int) -> int:
        """Record a sender's clock; the events it sent that never arrived."""
        last = self._last.get(hostname)
        if last is None and len(self._last) >= self._max_senders:
            return 0
        self._last[hostname] = (clock, self._epoch)
        if last is None or last[1] == self._epoch:
            return 0
        return max(0, clock - last[0] - 1)
