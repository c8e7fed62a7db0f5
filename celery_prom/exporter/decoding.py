"""Decoding Celery event messages: JSON only, whatever else a message claims to carry.

A pickled payload is never unpickled; anything that is not a JSON Celery event message
raises ``Undecodable``.
"""

from __future__ import annotations

import binascii
import json

JSON_CONTENT_TYPE = "application/json"
#: Larger payloads are dropped undecoded; a batch of Celery events is a few kilobytes.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024

_SCAN = json.JSONDecoder().raw_decode


class Undecodable(ValueError):
    """A payload that is not a JSON Celery event message."""


def decode_kombu_envelope(payload: bytes) -> object:
    """The event (or batch) inside a kombu message as Redis carries it: a JSON envelope
    whose body is the serialized event, usually base64-encoded."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Undecodable("too large")
    envelope = _json(payload)
    if not isinstance(envelope, dict):
        raise Undecodable("not a kombu message")
    body = envelope.get("body")
    properties = envelope.get("properties")
    if isinstance(properties, dict) and properties.get("body_encoding") == "base64":
        if not isinstance(body, str):
            raise Undecodable("body is not base64 text")
        try:
            body = binascii.a2b_base64(body)
        except (binascii.Error, ValueError):
            raise Undecodable("body is not base64") from None
    return decode_body(body, envelope.get("content-type"))


def decode_body(body: object, content_type: object) -> object:
    """A serialized event: JSON only, whatever else the message claims to carry."""
    if content_type != JSON_CONTENT_TYPE:
        raise Undecodable(f"content type {content_type!r}")
    if not isinstance(body, (bytes, bytearray, str)):
        raise Undecodable("no body")
    if len(body) > MAX_PAYLOAD_BYTES:
        raise Undecodable("too large")
    return _json(body)


def _json(data: bytes | bytearray | str) -> object:
    # The decoder's scanner, without json.loads' encoding detection and whitespace regexes:
    # a fifth of the cost of an event at flood rates. Messages are UTF-8 (kombu's JSON).
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        value, end = _SCAN(text)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        raise Undecodable("not JSON") from None
    if end != len(text) and text[end:].strip():
        raise Undecodable("data after the JSON document")
    return value
