"""Constants shared by the webhook tests and their conftest."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable

from darkroom.domain import Request

T0 = 1_000.0
HOOK = "https://example.com/hook"

# submit(webhook_url=HOOK, secret=None, dialect="requestqueue", now=T0) -> a queued request for model "m"
Submit = Callable[..., Request]


def reference_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Written from the spec, not from darkroom's code: the receiver's side.

    Key: a ``whsec_`` secret's base64 part, decoded (as the reference libraries do); any
    other secret as its UTF-8 bytes (darkroom's documented rule for raw secrets).
    Signed content: ``{webhook-id}.{webhook-timestamp}.{body}``; the header may hold
    several space-separated ``v1,<base64>`` signatures, any one of which may match.
    """
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    content = b".".join([headers["webhook-id"].encode(), headers["webhook-timestamp"].encode(), body])
    expected = base64.b64encode(hmac.digest(key, content, "sha256")).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False
