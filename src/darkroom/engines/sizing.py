"""Sizing a generation and its input images (torch-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image


def fit_area(width: int, height: int, area: int, multiple: int) -> tuple[int, int]:
    """About ``area`` pixels at the ratio width:height, each side a positive multiple of ``multiple``."""
    scale = math.sqrt(area / (width * height))
    return (max(multiple, round(width * scale / multiple) * multiple),
            max(multiple, round(height * scale / multiple) * multiple))


def stitch(images: Sequence[Image.Image]) -> Image.Image:
    """One RGB image: several references side by side at the first one's height.

    diffusers' Kontext pipeline takes one conditioning image per prompt (a list means a
    batch), so extra references (``input_image_2..4``) are joined into one, as common
    Kontext workflows do.
    """
    if len(images) == 1:
        return images[0].convert("RGB")
    height = images[0].height
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height),
                                       Image.Resampling.LANCZOS) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height))
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas
