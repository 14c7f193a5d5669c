"""Input images for editing: from blob storage (uploaded as base64) or from a URL."""

from __future__ import annotations

import httpx
from PIL import Image

from darkroom.engines.params import INPUT_IMAGE_FIELDS
from darkroom.errors import EngineError, InvalidField, NotFound
from darkroom.imaging import decode_image
from darkroom.service import BLOB_PREFIX
from darkroom.storage import BlobStore


def fetch_url(url: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """GET an image URL with a size cap and a timeout."""
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as resp:
            resp.raise_for_status()
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise EngineError(f"input image at {url} is larger than {max_bytes} bytes",
                                      code="invalid_input_image")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise EngineError(f"could not fetch input image {url}: {exc}", code="invalid_input_image") from exc


def load_input_images(payload: dict, blobs: BlobStore, *, max_bytes: int, timeout_s: float = 30.0) -> tuple[Image.Image, ...]:
    """Decoded input images in field order; raises EngineError(code=invalid_input_image)."""
    images = []
    for field in INPUT_IMAGE_FIELDS:
        value = payload.get(field)
        if not value:
            continue
        try:
            if value.startswith(BLOB_PREFIX):
                raw = blobs.get(value[len(BLOB_PREFIX):])
            else:
                raw = fetch_url(value, max_bytes=max_bytes, timeout_s=timeout_s)
            images.append(decode_image(raw, f"payload.{field}"))
        except (InvalidField, NotFound) as exc:
            raise EngineError(f"payload.{field}: {exc}", code="invalid_input_image") from exc
    return tuple(images)
