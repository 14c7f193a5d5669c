"""Result-URL signatures: any signature that is not ours is a 403, never a 500."""

from __future__ import annotations

import pytest

from darkroom.errors import Forbidden
from darkroom.signing import UrlSigner


def test_signed_urls_verify_and_anything_else_is_forbidden() -> None:
    signer = UrlSigner(b"k" * 32, ttl_s=60)
    expires, sig = signer.sign("results/x/1-0.png")
    signer.verify("results/x/1-0.png", expires, sig)
    for bad in ("é", "\x00", sig[:-1], sig.upper(), "", "ü" * 64):
        with pytest.raises(Forbidden):
            signer.verify("results/x/1-0.png", expires, bad)
    with pytest.raises(Forbidden):
        signer.verify("results/y/1-0.png", expires, sig)
