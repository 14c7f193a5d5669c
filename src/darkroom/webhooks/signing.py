"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Each delivery carries three headers:

- ``webhook-id``: the delivery id, the same on every attempt (receivers de-duplicate on it);
- ``webhook-timestamp``: integer Unix seconds of this attempt (receivers reject stale ones);
- ``webhook-signature``: ``v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))>``,
  over the exact body bytes sent.

The key bytes come from the secret (``secret_key``): a ``whsec_<base64>`` secret, the
Standard Webhooks format, is the base64 after the prefix, decoded, which is what the
reference libraries do; any other string is its UTF-8 bytes, as is. (A ``whsec_`` secret
whose rest is not valid base64 is also taken as the UTF-8 bytes of the whole string.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``secret``; see the module docstring."""
    if secret.startswith(PREFIX):
        try:
            return base64.b64decode(secret[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode("utf-8")


def generate_secret() -> str:
    """A new random secret in the Standard Webhooks format (``whsec_`` + 32 bytes, base64)."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
