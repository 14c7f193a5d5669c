"""Resizing a generated image to the size the request asked for (torch-free)."""

from __future__ import annotations

from PIL import Image


def resize(image: Image.Image, width: int, height: int, upscaler: str = "lanczos") -> Image.Image:
    """``image`` at exactly width x height.

    ``upscaler = "edges"``: enlarge with darkroom-mini's edge-steepening upscaler
    (``darkroom.engines.upscale.upscale_to``), made for its flat-coloured shapes at ~128 px; any
    other model (the model's ``upscaler`` option unset) gets PIL's Lanczos, which invents nothing.
    """
    if image.size == (width, height):
        return image
    if upscaler == "edges" and width > image.width and height > image.height:
        from darkroom.engines.upscale import upscale_to

        return upscale_to(image, width, height)
    return image.resize((width, height), Image.Resampling.LANCZOS)
