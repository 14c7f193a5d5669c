"""Blob storage for inputs and results: a local folder by default."""

from darkroom.storage.base import BlobStore
from darkroom.storage.local import LocalBlobStore

__all__ = ["BlobStore", "LocalBlobStore"]
