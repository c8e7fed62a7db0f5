"""The demo's traffic: three tasks an order, urgent orders prioritised, a report every 15."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from celery_prom.demo.traffic import REPORT_EVERY, send_traffic


class _StopAfter(threading.Event):
    """A stop event that lets ``ticks`` waits pass, then stops (no real waiting)."""

    def __init__(self, ticks: int) -> None:
        super().__init__()
        self._ticks = ticks

    def wait(self, timeout: float | None = None) -> bool:
        self._ticks -= 1
        return self._ticks < 0


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def test_each_order_sends_three_tasks_and_every_fifteenth_a_report() -> None:
    publisher = _Publisher()

    send_traffic(publisher, _StopAfter(2 * REPORT_EVERY))

    names = Counter(name for name, _ in publisher.sent)
    assert names == {
        "demo.checkout": 30,
        "demo.charge_card": 30,
        "demo.send_email": 30,
        "demo.build_report": 2,
    }


def test_an_orders_checkout_and_payment_share_its_priority() -> None:
    publisher = _Publisher()

    send_traffic(publisher, _StopAfter(200))

    orders: dict[int, dict[str, Any]] = {}
    for name, options in publisher.sent:
        if name in ("demo.checkout", "demo.charge_card"):
            orders.setdefault(options["args"][0], {})[name] = options["priority"]
    assert len(orders) == 200
    assert all(order["demo.checkout"] == order["demo.charge_card"] for order in orders.values())
    assert {order["demo.checkout"] for order in orders.values()} == {0, 9}
