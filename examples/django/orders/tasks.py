"""The work an order sets off, on two queues: charging the card (``payments``: declined
cards fail, gateway timeouts are retried) and the order confirmation e-mail (``emails``)."""

from __future__ import annotations

import logging

from celery import Task, shared_task

logger = logging.getLogger(__name__)

#: Test card tokens of the example's stand-in payment gateway, so that everyone (the test
#: included) knows which charges fail and which are retried.
DECLINED_CARD = "tok_declined"
#: The gateway times out on the first attempt to charge this card and accepts the second.
SLOW_GATEWAY_CARD = "tok_timeout"


class CardDeclined(Exception):
    """The card was refused: final, another attempt would be refused too."""


class GatewayTimeout(Exception):
    """The payment gateway did not answer in time: worth another attempt."""


@shared_task(bind=True, autoretry_for=(GatewayTimeout,), max_retries=3, default_retry_delay=1)
def charge_payment(self: Task, order_id: str, amount_cents: int, card: str) -> str:
    """Charge the order's card; returns the charge id."""
    if card == DECLINED_CARD:
        raise CardDeclined(f"order {order_id}: card declined")
    if card == SLOW_GATEWAY_CARD and self.request.retries == 0:
        raise GatewayTimeout(f"order {order_id}: no answer from the payment gateway")
    logger.info("order %s: charged %d cents", order_id, amount_cents)
    return f"ch_{order_id}"


@shared_task
def send_order_received(order_id: str, email: str) -> None:
    """Tell the customer their order arrived (logged: the example sends no mail)."""
    logger.info("order %s: confirmation sent to %s", order_id, email)
