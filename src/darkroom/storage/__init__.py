"""Blob storage for inputs and results: a local folder by default, or an S3-compatible bucket."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from darkroom.storage.base import BlobStore
from darkroom.storage.local import LocalBlobStore

if TYPE_CHECKING:
    from darkroom.settings import Settings

__all__ = ["BlobStore", "LocalBlobStore", "blob_store_from_settings"]


def blob_store_from_settings(settings: Settings, *, ensure_bucket: bool = True) -> BlobStore:
    """The store ``settings.storage_url`` names.

    Unset: a folder, ``data_dir/blobs``. ``file:///path``: that folder. ``s3://bucket/prefix``:
    an S3BlobStore with the ``s3_*`` settings; its bucket is created if missing
    (``ensure_bucket``), so a wrong endpoint or key fails at startup, not at the first result.
    """
    url = (settings.storage_url or "").strip()
    if not url:
        return LocalBlobStore(settings.data_dir / "blobs")
    scheme = urlsplit(url).scheme
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"storage_url {url!r}: a file URL names a local folder, file:///path")
        path = unquote(parts.path).rstrip("/")
        return LocalBlobStore(Path(path) if path else settings.data_dir / "blobs")
    if scheme == "s3":
        from darkroom.storage.s3 import S3BlobStore

        secret = settings.s3_secret_access_key
        store = S3BlobStore.from_url(
            url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            path_style=settings.s3_path_style,
        )
        if ensure_bucket:
            store.ensure_bucket()
        return store
    raise ValueError(f"storage_url {url!r}: expected file:///path or s3://bucket/prefix")
