"""Retention: requests (rows and every object they left) go a set time after they ended."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from darkroom.domain import Status
from darkroom.retention import objects_of, sweep
from darkroom.service import Service, preview_key
from darkroom.settings import Settings

T0 = 1_000_000.0


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_ended_requests_and_their_objects_go_after_the_retention(tmp_path: Path) -> None:
    service = Service.from_settings(Settings(data_dir=tmp_path, retention_s=3600))
    key, _ = service.store.create_key("k")
    edit = service.submit(key, "darkroom-mini", {"prompt": "make it blue", "input_image": _png()}).request
    running = service.submit(key, "darkroom-mini", {"prompt": "a red circle"}).request
    [claimed] = service.store.claim_batch("w", ["darkroom-mini"], 30, max_batch=1, now=T0)
    assert claimed.id == edit.id
    result = f"results/{edit.id}/1-0.jpeg"
    service.blobs.put(result, b"jpeg", "image/jpeg")
    service.blobs.put(preview_key(edit.id, 1), b"preview", "image/jpeg")
    service.store.finish_request(edit.id, "w", {"media": [{"id": "0", "key": result}]}, now=T0 + 10)
    stored = objects_of(service.store.get_request(edit.id))
    assert result in stored and any(k.startswith("inputs/") for k in stored) and all(
        service.blobs.exists(k) for k in stored)

    assert sweep(service, now=T0 + 10 + 3599) == 0  # not yet
    assert sweep(service, now=T0 + 10 + 3601) == 1
    assert service.store.get_request(edit.id) is None
    assert not any(service.blobs.exists(k) for k in stored)
    assert service.store.get_request(running.id).status == Status.QUEUED  # never what has not ended


def test_retention_is_off_by_default(tmp_path: Path) -> None:
    service = Service.from_settings(Settings(data_dir=tmp_path))
    key, _ = service.store.create_key("k")
    request = service.submit(key, "darkroom-mini", {"prompt": "x"}).request
    service.store.cancel_request(request.id, key.id, now=T0)
    assert sweep(service, now=T0 + 10**9) == 0 and service.store.get_request(request.id) is not None
