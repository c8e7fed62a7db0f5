"""The demo's customers: a steady mix of orders (three tasks each) and periodic reports."""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

#: Orders per second, and one report every this many orders.
ORDER_RATE = 2.0
REPORT_EVERY = 15


def send_traffic(app: Any, stop: threading.Event) -> None:
    """Publish orders until ``stop`` is set; urgent orders get the highest priority."""
    for order_id in itertools.count(1):
        if stop.wait(1.0 / ORDER_RATE):
            return
        priority = 9 if random.random() < 0.2 else 0
        app.send_task("demo.checkout", args=[order_id], priority=priority)
        app.send_task("demo.charge_card", args=[order_id], priority=priority)
        app.send_task("demo.send_email", args=[order_id])
        if order_id % REPORT_EVERY == 0:
            app.send_task("demo.build_report")
