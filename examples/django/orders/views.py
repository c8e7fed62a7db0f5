"""POST /api/v1/orders: validate an order, enqueue its tasks, answer 202 with their ids."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from orders.tasks import charge_payment, send_order_received


class InvalidOrder(ValueError):
    """The request body is not an order; the message says why."""


@dataclass(frozen=True)
class Order:
    email: str
    amount_cents: int
    card: str


@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    # The API has no cookie-based sessions, hence no CSRF middleware in the settings.
    try:
        order = parse_order(request.body)
    except InvalidOrder as error:
        return JsonResponse({"error": str(error)}, status=400)
    order_id = uuid.uuid4().hex
    charge = charge_payment.delay(order_id, order.amount_cents, order.card)
    confirmation = send_order_received.delay(order_id, order.email)
    return JsonResponse(
        {
            "order_id": order_id,
            "tasks": {"charge_payment": charge.id, "send_order_received": confirmation.id},
        },
        status=202,
    )


def parse_order(body: bytes) -> Order:
    try:
        data: Any = json.loads(body)
    except ValueError as error:
        raise InvalidOrder("the body is not JSON") from error
    if not isinstance(data, dict):
        raise InvalidOrder("the body is not a JSON object")
    email, amount, card = data.get("email"), data.get("amount_cents"), data.get("card")
    if not isinstance(email, str) or "@" not in email:
        raise InvalidOrder("email: an e-mail address is required")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidOrder("amount_cents: a positive whole number is required")
    if not isinstance(card, str) or not card:
        raise InvalidOrder("card: a card token is required")
    return Order(email, amount, card)
