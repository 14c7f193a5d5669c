"""Signed, expiring result URLs (HMAC-SHA256 over the blob key and expiry)."""

from __future__ import annotations

import hashlib
import hmac
import time

from darkroom.errors import Forbidden


class UrlSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def _mac(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def sign(self, key: str, *, now: float | None = None, ttl_s: int | None = None) -> tuple[int, str]:
        """(expiry, signature) for ``key``."""
        expires = int((now if now is not None else time.time()) + (ttl_s or self.ttl_s))
        return expires, self._mac(key, expires)

    def verify(self, key: str, expires: str | int | None, signature: str | None, *, now: float | None = None) -> None:
        """Raises Forbidden unless the signature is valid for key and expiry and not expired."""
        if expires is None or signature is None:
            raise Forbidden("result URL is not signed")
        try:
            exp = int(expires)
        except (TypeError, ValueError) as exc:
            raise Forbidden("result URL has a malformed expiry") from exc
        # Bytes, not str: compare_digest refuses a non-ASCII str (a 500 on `sig=%C3%A9`).
        if not hmac.compare_digest(self._mac(key, exp).encode(), str(signature).encode("utf-8", "replace")):
            raise Forbidden("result URL signature is invalid")
        if exp < (now if now is not None else time.time()):
            raise Forbidden("result URL has expired")
