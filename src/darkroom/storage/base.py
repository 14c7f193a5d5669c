"""The blob store protocol. Keys are relative, slash-separated paths like ``results/<id>/0.png``."""

from __future__ import annotations

from typing import Protocol


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` durably: once this returns, a crash does not lose it."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises darkroom.errors.NotFound if there are none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is already gone."""
        ...

    def url_for(self, key: str, ttl_s: int, *, mutable: bool = False) -> str | None:
        """A URL clients can download ``key`` from directly for ``ttl_s`` seconds (S3: presigned),
        or None when the store has no such URLs (a local folder): callers then hand out
        darkroom's own signed ``/media`` URL.

        ``mutable``: the blob is overwritten in place (previews), so the answer must tell
        caches not to keep it. (A presigned URL cannot take an extra cache-busting query
        parameter: it would break the signature.)
        """
        ...
