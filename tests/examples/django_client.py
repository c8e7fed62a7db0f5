"""The Django side of the example's end-to-end test, run as a process of its own.

Django's settings are process-wide and cannot be unset once configured, and the example
counts in prometheus_client's default registry; in a separate process both start empty and
leave nothing behind in the test session.

Reads a JSON list of requests (``method``, ``path``, optional ``body`` and ``accept``) from
stdin, makes them in order with Django's test client and writes a JSON list of the
responses (``status``, ``content_type``, ``body``) to stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import django
from django.test import Client
from django.test.utils import setup_test_environment


def main() -> None:
    django.setup()
    # Allows the test client's host name and keeps outgoing e-mail in memory.
    setup_test_environment()
    client = Client()
    responses = [make_request(client, request) for request in json.load(sys.stdin)]
    json.dump(responses, sys.stdout)


def make_request(client: Client, request: dict[str, Any]) -> dict[str, Any]:
    headers = {"accept": request["accept"]} if "accept" in request else {}
    if request["method"] == "POST":
        response = client.post(
            request["path"],
            data=json.dumps(request["body"]),
            content_type="application/json",
            headers=headers,
        )
    else:
        response = client.generic(request["method"], request["path"], headers=headers)
    return {
        "status": response.status_code,
        "content_type": response["Content-Type"],
        "body": response.content.decode("utf-8"),
    }


if __name__ == "__main__":
    main()
