"""Resizing a generated image to the size the request asked for (torch-free)."""

from __future__ import annotations

from PIL import Image


def resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` at exactly width x height: ``darkroom.engines.upscale.upscale_to`` when
    enlarging and that module exists, else PIL's Lanczos."""
    if image.size == (width, height):
        return image
    if width > image.width and height > image.height:
        try:
            from darkroom.engines.upscale import upscale_to
        except ModuleNotFoundError as exc:
            if exc.name != "darkroom.engines.upscale":
                raise
        else:
            return upscale_to(image, width, height)
    return image.resize((width, height), Image.Resampling.LANCZOS)
