"""Decoding event messages: JSON only, and every kind of undecodable payload refused."""

from __future__ import annotations

import json
import pickle

import pytest

from celery_prom.exporter.decoding import (
    MAX_PAYLOAD_BYTES,
    Undecodable,
    decode_body,
    decode_kombu_envelope,
)
from tests.exporter_process import kombu_envelope


def test_a_kombu_envelope_yields_its_event() -> None:
    body = {"type": "task-received", "uuid": "u1"}
    assert decode_kombu_envelope(kombu_envelope(json.dumps(body).encode())) == body


def test_a_batch_is_a_list() -> None:
    batch = [{"type": "task-started"}, {"type": "task-succeeded"}]
    assert decode_kombu_envelope(kombu_envelope(json.dumps(batch).encode())) == batch


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"{not json", id="bad-json"),
        pytest.param(b"\xff\xfe\xfa", id="not-utf8"),
        pytest.param(b"[1, 2]", id="not-an-envelope"),
        pytest.param(
            json.dumps(
                {
                    "body": "%%%",
                    "content-type": "application/json",
                    "properties": {"body_encoding": "base64"},
                }
            ).encode(),
            id="bad-base64",
        ),
        pytest.param(
            json.dumps(
                {
                    "body": 5,
                    "content-type": "application/json",
                    "properties": {"body_encoding": "base64"},
                }
            ).encode(),
            id="body-not-text",
        ),
        pytest.param(
            kombu_envelope(
                pickle.dumps({"type": "task-received"}), "application/x-python-serialize"
            ),
            id="pickle",
        ),
        pytest.param(kombu_envelope(b"{}", "application/x-msgpack"), id="msgpack"),
        pytest.param(kombu_envelope(b"\xc3\x28"), id="body-not-utf8"),
        pytest.param(kombu_envelope(b"[" * 100_000 + b"]" * 100_000), id="deep-nesting"),
        pytest.param(b" " * (MAX_PAYLOAD_BYTES + 1), id="too-large"),
    ],
)
def test_undecodable_payloads_raise_undecodable(payload: bytes) -> None:
    with pytest.raises(Undecodable):
        decode_kombu_envelope(payload)


def test_a_body_is_only_ever_decoded_as_json() -> None:
    assert decode_body(b'{"a": 1}', "application/json") == {"a": 1}
    with pytest.raises(Undecodable):
        decode_body(b'{"a": 1}', "application/x-python-serialize")
    with pytest.raises(Undecodable):
        decode_body(None, "application/json")
