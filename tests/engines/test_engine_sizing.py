"""The engine's torch-free image helpers: sizes, stitching, resizing."""

from __future__ import annotations

import sys
import types

from PIL import Image

from darkroom.engines.sizing import fit_area, stitch
from darkroom.engines.resize import resize


def test_fit_area_keeps_aspect_in_multiples():
    assert fit_area(1024, 1024, 1024 * 1024, 16) == (1024, 1024)
    assert fit_area(1360, 768, 1360 * 768, 16) == (1360, 768)
    assert fit_area(1024, 1024, 512 * 512, 16) == (512, 512)
    w, h = fit_area(1360, 768, 512 * 512, 16)
    assert w % 16 == 0 and h % 16 == 0 and abs(w * h - 512 * 512) < 0.1 * 512 * 512
    assert abs(w / h - 1360 / 768) < 0.05
    assert fit_area(1000, 10, 16 * 16, 16) == (160, 16)  # never a zero side


def test_stitch_puts_references_side_by_side():
    a = Image.new("RGB", (100, 50), (255, 0, 0))
    b = Image.new("RGB", (20, 100), (0, 0, 255))
    out = stitch([a, b])
    assert out.size == (110, 50)
    assert out.getpixel((10, 10)) == (255, 0, 0) and out.getpixel((105, 10)) == (0, 0, 255)
    assert stitch([a]).size == (100, 50)


def test_resize_uses_the_edge_upscaler_only_when_the_model_asks(monkeypatch):
    """darkroom-mini's edge-steepening upscaler is for its flat shapes: any other model (the
    ``upscaler`` option unset) is enlarged with Lanczos, which invents no edges."""
    small = Image.new("RGB", (64, 64), (1, 2, 3))
    assert resize(small, 64, 64) is small

    calls = []
    module = types.ModuleType("darkroom.engines.upscale")

    def upscale_to(image, width, height):
        calls.append((image.size, width, height))
        return image.resize((width, height))

    module.upscale_to = upscale_to
    monkeypatch.setitem(sys.modules, "darkroom.engines.upscale", module)
    assert resize(small, 128, 96).size == (128, 96)  # default: Lanczos
    assert resize(small, 128, 96, "lanczos").size == (128, 96)
    assert calls == []
    assert resize(small, 128, 96, "edges").size == (128, 96)
    assert resize(Image.new("RGB", (256, 256)), 128, 96, "edges").size == (128, 96)  # shrinking stays with PIL
    assert calls == [((64, 64), 128, 96)]
