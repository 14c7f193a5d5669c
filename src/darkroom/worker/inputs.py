"""Input images for editing: from blob storage (uploaded as base64) or from a URL."""

from __future__ import annotations

import time

import httpx
from PIL import Image

from darkroom.domain import InputRef
from darkroom.errors import EngineError, InvalidField, NotFound
from darkroom.imaging import MAX_IMAGE_PIXELS, decode_image
from darkroom.netguard import NetGuard, UrlNotAllowed, guarded_client
from darkroom.service import BLOB_PREFIX
from darkroom.storage import BlobStore

MAX_REDIRECTS = 5


def fetch_url(url: str, *, max_bytes: int, timeout_s: float, guard: NetGuard | None = None) -> bytes:
    """GET an image URL with a size cap and a timeout (per read and for the whole download),
    through the SSRF guard.

    ``guard`` None is the strict default (no allow-list). Every connection, the first and
    each redirect's (at most MAX_REDIRECTS), is checked when it is opened, so a name that
    was public at submit time and resolves to a private address now is refused. Raises
    EngineError(code=invalid_input_image).
    """
    guard = guard or NetGuard()
    try:
        guard.check_url(url, "input_image")  # scheme and host, with a clear message
        with guarded_client(guard, timeout=timeout_s, follow_redirects=True, max_redirects=MAX_REDIRECTS) as client:
            with client.stream("GET", url) as resp:
                resp.raise_for_status()
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise EngineError(f"input image at {url} is larger than {max_bytes} bytes",
                                      code="invalid_input_image")
                chunks, size = [], 0
                deadline = time.monotonic() + timeout_s  # the httpx timeout is per read: cap the whole download
                for chunk in resp.iter_bytes():
                    if time.monotonic() > deadline:
                        raise EngineError(f"input image at {url} took over {timeout_s:g} s to download",
                                          code="invalid_input_image")
                    size += len(chunk)
                    if size > max_bytes:
                        raise EngineError(f"input image at {url} is larger than {max_bytes} bytes",
                                          code="invalid_input_image")
                    chunks.append(chunk)
                return b"".join(chunks)
    except UrlNotAllowed as exc:
        raise EngineError(f"input image {url} may not be fetched: {exc.message}", code="invalid_input_image") from exc
    except httpx.HTTPError as exc:
        raise EngineError(f"could not fetch input image {url}: {exc}", code="invalid_input_image") from exc


def load_input_images(inputs: tuple[InputRef, ...], blobs: BlobStore, *, max_bytes: int, timeout_s: float = 30.0,
                      guard: NetGuard | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image, ...]:
    """The spec's input images, decoded, in field order; URLs are fetched through ``guard``
    (see ``fetch_url``). Raises EngineError(code=invalid_input_image)."""
    images = []
    for ref in inputs:
        try:
            if ref.ref.startswith(BLOB_PREFIX):
                raw = blobs.get(ref.ref[len(BLOB_PREFIX):])
            else:
                raw = fetch_url(ref.ref, max_bytes=max_bytes, timeout_s=timeout_s, guard=guard)
            images.append(decode_image(raw, f"payload.{ref.field}", max_pixels=max_pixels))
        except (InvalidField, NotFound) as exc:
            raise EngineError(f"payload.{ref.field}: {exc}", code="invalid_input_image") from exc
    return tuple(images)
