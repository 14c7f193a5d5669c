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

    pipeline_class: str  # the diffusers class that loads the folder (for editing, where it edits)
    max_images: int = 0  # input images it takes (0: text-to-image only)
    text_to_image_class: str = ""  # the class for text-to-image, where not pipeline_class
    call: dict[str, Any] = field(default_factory=dict)  # extra arguments for each call


CASES = {
    "flux": Family("FluxPipeline", call={"max_sequence_length": 32}),
    # max_area: Kontext resizes to about a megapixel unless told the area to keep.
    "flux-kontext": Family("FluxKontextPipeline", max_images=1,
                           call={"max_sequence_length": 32, "max_area": HEIGHT * WIDTH}),
    "flux2": Family("Flux2Pipeline", max_images=2, call={"max_sequence_length": 64}),
    # True CFG with a negative prompt, as Qwen-Image is run.
    "qwen-image": Family("QwenImagePipeline", call={"negative_prompt": "blurry", "true_cfg_scale": 4.0}),
    # The editing pipeline needs an image; its weights make images from text with QwenImagePipeline.
    "qwen-image-edit": Family("QwenImageEditPlusPipeline", max_images=2, text_to_image_class="QwenImagePipeline",
                              call={"negative_prompt": "blurry", "true_cfg_scale": 4.0}),
    "z-image": Family("ZImagePipeline", call={"negative_prompt": "blurry", "guidance_scale": 4.0,
                                              "max_sequence_length": 64}),
    # The step-distilled [klein] takes no guidance (1.0 says so without a warning).
    "flux2-klein": Family("Flux2KleinPipeline", max_images=2, call={"guidance_scale": 1.0, "max_sequence_length": 64}),
    "chroma": Family("ChromaPipeline", call={"negative_prompt": "blurry", "guidance_scale": 4.0,
                                             "max_sequence_length": 64}),
    "sd3": Family("StableDiffusion3Pipeline", call={"negative_prompt": "blurry", "guidance_scale": 4.0,
                                                    "max_sequence_length": 64}),
}


def test_every_family_has_a_case():
    assert set(CASES) == set(FAMILIES)


def test_an_unknown_family_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="no tiny pipeline for family 'sdxl'"):
        build_tiny("sdxl", tmp_path)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory):
    """Each family's tiny pipeline, built once for the module (on first use) and loaded with
    ``pipeline_class`` (the family's own class by default)."""
    import diffusers

    folders: dict[str, Path] = {}
    loaded: dict[tuple[str, str], Any] = {}

    def get(family: str, pipeline_class: str = ""):
        pipeline_class = pipeline_class or CASES[family].pipeline_class
        if family not in folders:
            folders[family] = build_tiny(family, tmp_path_factory.mktemp(family))
            assert (folders[family] / "model_index.json").is_file()
        if (family, pipeline_class) not in loaded:
            pipe = getattr(diffusers, pipeline_class).from_pretrained(folders[family])
            pipe.set_progress_bar_config(disable=True)
            loaded[family, pipeline_class] = pipe
        return loaded[family, pipeline_class]

    return get


def input_images(count: int) -> list[Image.Image]:
    """Noise images of different sizes (64 px or more: FLUX.2 refuses smaller)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (64 + 16 * i, 80, 3), dtype=np.uint8)) for i in range(count)]


PROMPT = "a red cat sitting on a table"


def generate(pipe, family: str, *, seed: int = 0, images: list[Image.Image] | None = None,
             prompt: str = PROMPT) -> np.ndarray:
    """One image, 2 steps, as uint8 pixels."""
    kwargs = dict(CASES[family].call)
    if images:
        kwargs["image"] = images[0] if len(images) == 1 else images
    out = pipe(
        prompt=prompt,
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


@pytest.mark.parametrize("family", list(CASES))
def test_text_to_image(pipelines, family: str):
    pipe = pipelines(family, CASES[family].text_to_image_class)
    first = generate(pipe, family, seed=3)
    assert_an_image(first)
    assert np.array_equal(first, generate(pipe, family, seed=3)), "the same seed gave other pixels"
    assert not np.array_equal(first, generate(pipe, family, seed=4)), "another seed gave the same pixels"
    # The prompt reaches the transformer through the tokenizer and text encoder.
    other = generate(pipe, family, seed=3, prompt="a blue dog running in the snow at night")
    assert not np.array_equal(first, other), "another prompt gave the same pixels"


@pytest.mark.parametrize("family", [name for name, case in CASES.items() if case.max_images])
def test_editing_with_one_and_several_images(pipelines, family: str):
    pipe = pipelines(family)
    first, second = input_images(2)
    edited = generate(pipe, family, seed=3, images=[first])
    assert_an_image(edited)
    assert np.array_equal(edited, generate(pipe, family, seed=3, images=[first])), "the same seed gave other pixels"
    # The input image conditions the result: another image, other pixels.
    inverted = Image.fromarray(255 - np.asarray(first))
    assert not np.array_equal(edited, generate(pipe, family, seed=3, images=[inverted]))
    if CASES[family].max_images > 1:
        both = generate(pipe, family, seed=3, images=[first, second])
        assert_an_image(both)
        assert not np.array_equal(edited, both), "the second image changed nothing"


@pytest.mark.parametrize("family", ["qwen-image", "qwen-image-edit"])
def test_the_prompt_template_is_as_long_as_qwen_drops(pipelines, family: str):
    # Qwen-Image drops the hidden states of its template's system part by a fixed token count
    # (34; 64 for the editing template); the tiny vocabulary spells that part in as many tokens.
    pipe = pipelines(family)
    system_part = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(system_part).input_ids) == pipe.prompt_template_encode_start_idx


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_same_seed_builds_the_same_files(tmp_path: Path, family: str):
    first = folder_digest(build_tiny(family, tmp_path / "a", seed=5))
    assert any(name.endswith(".safetensors") for name in first), "no weights saved"
    assert first == folder_digest(build_tiny(family, tmp_path / "b", seed=5))  # weights, configs, tokenizers
    assert first != folder_digest(build_tiny(family, tmp_path / "c", seed=6))
