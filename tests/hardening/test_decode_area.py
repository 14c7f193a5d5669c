"""The worker decodes a large JPEG input at a reduced DCT scale: never smaller than
``DECODE_AREA`` (engines work at about a megapixel), never at a size a tiny file declares."""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageDraw

from darkroom.imaging import DECODE_AREA, decode_image


def _jpeg(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).rectangle((0, 0, width // 2, height), fill=(200, 30, 30))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_keeps_enough_pixels() -> None:
    decoded = decode_image(_jpeg(6000, 4000))
    assert decoded.size == (3000, 2000)  # 1/2: 1/4 (1500 x 1000) would be under DECODE_AREA
    assert decoded.width * decoded.height >= DECODE_AREA
    left, right = decoded.getpixel((100, 1000)), decoded.getpixel((2900, 1000))
    assert left[0] > 150 and left[1] < 80 and min(right) > 220  # the same picture, smaller


def test_a_jpeg_at_or_under_the_decode_area_keeps_its_size() -> None:
    assert decode_image(_jpeg(2048, 2048)).size == (2048, 2048)
    assert decode_image(_jpeg(300, 200)).size == (300, 200)


def test_a_tiny_file_declaring_8000_by_8000_is_not_decoded_at_that_size() -> None:
    data = bytearray(_jpeg(8, 8))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 8000, 8000)  # the frame header's height and width
    assert len(data) < 1000
    decoded = decode_image(bytes(data))
    assert decoded.size == (4000, 4000)  # 48 MB, not 192 MB
