"""The tiny pipelines of every family: built offline, saved, loaded back with the family's diffusers
class, and run for real (2 steps on the CPU), text-to-image and editing with one and several images."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.testing.tiny_families import FAMILIES, build_tiny

HEIGHT, WIDTH = 64, 48  # not square, so a transposed output shows


@dataclass(frozen=True)
class Family:
    """How a family's tiny pipeline is loaded and called."""

    pipeline_class: str  # the diffusers class that loads the folder
    max_images: int = 0  # input images it takes (0: text-to-image only)
    text_to_image: bool = True  # it runs without an input image
    call: dict[str, Any] = field(default_factory=dict)  # extra arguments for each call


CASES = {
    "flux": Family("FluxPipeline", call={"max_sequence_length": 32}),
    # max_area: Kontext resizes to about a megapixel unless told the area to keep.
    "flux-kontext": Family("FluxKontextPipeline", max_images=1,
                           call={"max_sequence_length": 32, "max_area": HEIGHT * WIDTH}),
    "flux2": Family("Flux2Pipeline", max_images=2, call={"max_sequence_length": 64}),
}


def test_every_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


def test_an_unknown_family_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="no tiny pipeline for family 'sdxl'"):
        build_tiny("sdxl", tmp_path)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory):
    """Each family's tiny pipeline, built and loaded once for the module (on first use)."""
    import diffusers

    loaded: dict[str, Any] = {}

    def get(family: str):
        if family not in loaded:
            folder = build_tiny(family, tmp_path_factory.mktemp(family))
            assert (folder / "model_index.json").is_file()
            pipe = getattr(diffusers, CASES[family].pipeline_class).from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            loaded[family] = pipe
        return loaded[family]

    return get


def input_images(count: int) -> list[Image.Image]:
    """Noise images of different sizes (64 px or more: FLUX.2 refuses smaller)."""
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, (64 + 16 * i, 80, 3), dtype=np.uint8)) for i in range(count)]


def generate(pipe, family: str, *, seed: int = 0, images: list[Image.Image] | None = None) -> np.ndarray:
    """One image, 2 steps, as uint8 pixels."""
    kwargs = dict(CASES[family].call)
    if images:
        kwargs["image"] = images[0] if len(images) == 1 else images
    out = pipe(
        prompt="a red cat sitting on a table",
        num_inference_steps=2,
        height=HEIGHT,
        width=WIDTH,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **kwargs,
    ).images[0]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def assert_an_image(pixels: np.ndarray) -> None:
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    assert pixels.std() > 0, "a constant image"


@pytest.mark.parametrize("family", [name for name, case in CASES.items() if case.text_to_image])
def test_text_to_image(pipelines, family: str):
    pipe = pipelines(family)
    first = generate(pipe, family, seed=3)
    assert_an_image(first)
    assert np.array_equal(first, generate(pipe, family, seed=3)), "the same seed gave other pixels"
    assert not np.array_equal(first, generate(pipe, family, seed=4)), "another seed gave the same pixels"


EDITS = [(name, count) for name, case in CASES.items() for count in sorted({1, case.max_images}) if case.max_images]


@pytest.mark.parametrize(("family", "count"), EDITS)
def test_editing(pipelines, family: str, count: int):
    pipe = pipelines(family)
    images = input_images(count)
    edited = generate(pipe, family, seed=3, images=images)
    assert_an_image(edited)
    assert np.array_equal(edited, generate(pipe, family, seed=3, images=images)), "the same seed gave other pixels"
    # The input images condition the result: other images, other pixels.
    others = [Image.fromarray(255 - np.asarray(image)) for image in images]
    assert not np.array_equal(edited, generate(pipe, family, seed=3, images=others))


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.safetensors"))
    }


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_same_seed_builds_the_same_weights(tmp_path: Path, family: str):
    first = folder_digest(build_tiny(family, tmp_path / "a", seed=5))
    assert first, "no weights saved"
    assert first == folder_digest(build_tiny(family, tmp_path / "b", seed=5))
