"""Input images: limits read from the header (no decoding in the API process), odd modes
converted, broken files refused with invalid_input_image naming the field."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from darkroom.errors import InvalidField, PayloadTooLarge
from darkroom.imaging import decode_image, probe_image
from darkroom.service import Service
from darkroom.settings import Settings


def _bytes(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("image,fmt,save", [
    (Image.new("CMYK", (40, 30), (0, 255, 0, 0)), "JPEG", {}),
    (Image.new("I;16", (40, 30), 40000), "PNG", {}),
    (Image.new("RGBA", (40, 30), (255, 0, 0, 128)), "PNG", {}),
    (Image.new("P", (40, 30), 3), "PNG", {}),
    (Image.new("LA", (40, 30), (100, 255)), "PNG", {}),
])
def test_odd_modes_are_converted_to_rgb(image: Image.Image, fmt: str, save: dict) -> None:
    decoded = decode_image(_bytes(image, fmt, **save))
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


def test_an_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buf.getvalue())
    assert decoded.size == (20, 10) and decoded.getpixel((0, 0))[0] > 200


def test_limits_come_from_the_header() -> None:
    big = _bytes(Image.new("RGB", (300, 200)), "JPEG")
    assert probe_image(big, max_pixels=60_000) == (300, 200)
    with pytest.raises(InvalidField) as err:
        probe_image(big, "payload.input_image_2", max_pixels=59_999)
    assert (err.value.code, err.value.field) == ("invalid_input_image", "payload.input_image_2")
    assert "300 x 200" in err.value.message and "59999" in err.value.message


@pytest.mark.parametrize("data", [
    _bytes(Image.new("RGB", (64, 64), "red"), "PNG")[:-40],  # truncated
    b"GIF89a not really",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    b"plain text",
])
def test_broken_files_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidField) as err:
        decode_image(data, "payload.input_image")
    assert err.value.code == "invalid_input_image" and err.value.field == "payload.input_image"


def test_the_api_refuses_without_decoding_and_stores_nothing(tmp_path: Path) -> None:
    service = Service.from_settings(Settings(data_dir=tmp_path, max_image_pixels=100 * 100,
                                             max_image_bytes=64 * 1024))
    key, _ = service.store.create_key("k")
    png = _bytes(Image.new("RGB", (101, 100), "red"), "PNG")
    with pytest.raises(InvalidField) as err:
        service.submit(key, "darkroom-mini", {"prompt": "x", "input_image": base64.b64encode(png).decode()})
    assert err.value.field == "payload.input_image" and "10000 pixels" in err.value.message
    huge = base64.b64encode(b"\x00" * (65 * 1024)).decode()
    with pytest.raises(PayloadTooLarge) as too_big:
        service.submit(key, "darkroom-mini", {"prompt": "x", "input_image": huge})
    assert too_big.value.status_code == 413 and too_big.value.field == "payload.input_image"
    assert service.store.count_requests() == 0 and not any((tmp_path / "blobs").rglob("*.*"))
