"""Signatures verify with an independent implementation of the Standard Webhooks scheme."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from darkroom.webhooks import generate_secret, secret_key, sign, signature_headers

from _webhook_helpers import reference_verify


def test_published_test_vector() -> None:
    # From the Standard Webhooks specification and its reference libraries.
    signature = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                     b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("secret", [generate_secret(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "my raw secret",
                                    "pässwörd"])
def test_reference_verifier_accepts(secret: str) -> None:
    body = '{"request_id":"r1","status":"success","prompt":"ünïcode"}'.encode()
    headers = signature_headers(secret, "d1c0ffee", 1_700_000_000, body)
    assert headers["webhook-id"] == "d1c0ffee" and headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    assert reference_verify(secret, headers, body)
    assert not reference_verify(secret, headers, body + b" ")
    assert not reference_verify(secret, {**headers, "webhook-timestamp": "1700000001"}, body)
    assert not reference_verify(secret, {**headers, "webhook-id": "other"}, body)
    assert not reference_verify(generate_secret(), headers, body)


def test_key_derivation() -> None:
    assert secret_key("whsec_" + base64.b64encode(b"\x00\x01key").decode()) == b"\x00\x01key"
    assert secret_key("raw-secret") == b"raw-secret"
    assert secret_key("whsec_not base64!") == b"whsec_not base64!"  # malformed: taken as the raw string
    new = generate_secret()
    assert new.startswith("whsec_") and len(secret_key(new)) == 32


def test_same_content_same_signature_and_hmac_sha256() -> None:
    body = b"{}"
    sig = sign("k", "id", 1, body)
    assert sig == sign("k", "id", 1, body)
    assert sig == "v1," + base64.b64encode(hmac.new(b"k", b"id.1.{}", hashlib.sha256).digest()).decode()
