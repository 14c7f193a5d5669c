"""Every pipeline family through the one engine: tiny random-weight pipelines of each family
(``darkroom.testing.tiny_families``), saved, then loaded through a registry file like users'
models. Text-to-image, editing with one and several images, seeds, cancel, progress, previews,
and the call arguments each family's ``guidance`` becomes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from darkroom.engines import create_engine
from darkroom.engines.base import PREVIEW_MAX_SIDE, GenerationJob
from darkroom.engines.families import FAMILIES
from darkroom.engines.registry import load_registry
from darkroom.testing.tiny_families import FAMILIES as BUILT

TEXT_FAMILIES = [f for f in BUILT if not FAMILIES[f].needs_image]
EDIT_FAMILIES = [f for f in BUILT if FAMILIES[f].editing]
MULTI_FAMILIES = [f for f in EDIT_FAMILIES if FAMILIES[f].max_input_images > 1]


@pytest.fixture(scope="module")
def family_registry(tiny_family_models: Path):
    return load_registry(tiny_family_models)


@pytest.fixture(scope="module")
def engines(family_registry):
    """One loaded engine per family, shared by this module's tests."""
    made: dict[str, object] = {}

    def get(family: str, **options):
        key = (family, tuple(sorted(options.items())))
        if key not in made:
            spec = family_registry.get(f"fam-{family}")
            spec = replace(spec, options={**spec.options, **options})
            engine = create_engine(spec, device="cpu")
            engine.load()
            made[key] = engine
        return made[key]

    yield get
    for engine in made.values():
        engine.close()


def job(family: str, request_id: str = "r1", *, seed: int = 1, steps: int = 2, images=(), prompt="a red fox",
        width: int = 1024, height: int = 768, guidance: float | None = None) -> GenerationJob:
    g = FAMILIES[family].guidance.default if guidance is None else guidance
    return GenerationJob(request_id=request_id, prompt=prompt, width=width, height=height, seed=seed, steps=steps,
                         guidance=g, images=tuple(images))


def keep_going(request_id: str, step: int, total: int) -> bool:
    return True


def references(count: int) -> list[Image.Image]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    return [Image.new("RGB", (96 + 16 * i, 80), colours[i % len(colours)]) for i in range(count)]


def spy_calls(engine, monkeypatch) -> list[dict]:
    """The keyword arguments of each pipeline call (the real call still runs)."""
    calls: list[dict] = []
    pipe = engine._pipe
    original = type(pipe).__call__

    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", recording)
    return calls


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_to_image_same_seed_same_pixels(engines, family):
    engine = engines(family)
    assert type(engine._pipe).__name__ == FAMILIES[family].pipeline_class
    [a] = engine.generate([job(family, "a", seed=7)], keep_going)
    [b] = engine.generate([job(family, "b", seed=8)], keep_going)
    [again] = engine.generate([job(family, "a", seed=7)], keep_going)  # alone, as a: a batch changes rounding
    assert a.image.size == (1024, 768) and a.image.mode == "RGB"
    assert a.image.tobytes() == again.image.tobytes()
    assert a.image.tobytes() != b.image.tobytes()


@pytest.mark.parametrize("family", EDIT_FAMILIES)
def test_edit_with_one_image_same_seed_same_pixels(engines, family, monkeypatch):
    engine = engines(family)
    calls = spy_calls(engine, monkeypatch)
    [result] = engine.generate([job(family, images=references(1), seed=3, guidance=1.0)], keep_going)
    [again] = engine.generate([job(family, images=references(1), seed=3, guidance=1.0)], keep_going)
    assert result.image is not None and result.image.size == (1024, 768)
    assert result.image.tobytes() == again.image.tobytes()
    given = calls[0]["image"]
    assert len(given) == 1 and min(given[0].size) >= FAMILIES[family].min_image_side


@pytest.mark.parametrize("family", MULTI_FAMILIES)
def test_edit_with_several_images(engines, family, monkeypatch):
    engine = engines(family)
    calls = spy_calls(engine, monkeypatch)
    count = 2  # Qwen-Image-Edit encodes every reference at 1 MP whatever its size: keep the test short
    [result] = engine.generate([job(family, images=references(count), guidance=1.0)], keep_going)
    assert result.image is not None and result.image.size == (1024, 768)
    expected = 1 if FAMILIES[family].stitch_references else count  # Kontext: one stitched image per prompt
    assert len(calls[0]["image"]) == expected


@pytest.mark.parametrize("family", [f for f in BUILT if FAMILIES[f].step_callback])
def test_cancel_mid_run_progress_and_previews(engines, family):
    engine = engines(family)
    seen: list[tuple[int, int, tuple[int, int], str]] = []

    def stop_after_two(request_id, step, total, preview=None):
        image = preview()
        seen.append((step, total, image.size, image.mode))
        return step < 2

    images = references(1) if FAMILIES[family].needs_image else ()
    [result] = engine.generate([job(family, steps=4, images=images, guidance=1.0)], stop_after_two)
    assert result.stopped and result.image is None
    assert [(s, t) for s, t, _, _ in seen] == [(1, 4), (2, 4)]
    for _, _, size, mode in seen:
        assert mode == "RGB" and max(size) <= PREVIEW_MAX_SIDE
        assert size[0] > size[1]  # the job's 4:3 aspect


@pytest.mark.parametrize("family", [f for f in BUILT if FAMILIES[f].step_callback])
def test_projection_previews_do_not_change_the_pixels(engines, family):
    """The fitted latent-to-RGB projection (what large models use) works on every family's layout."""
    engine = engines(family, preview="projection")
    assert engine._projection is not None
    images = references(1) if FAMILIES[family].needs_image else ()
    previews: list[Image.Image] = []

    def with_previews(request_id, step, total, preview=None):
        previews.append(preview())
        return True

    [plain] = engine.generate([job(family, images=images, guidance=1.0)], keep_going)
    [watched] = engine.generate([job(family, images=images, guidance=1.0)], with_previews)
    assert plain.image.tobytes() == watched.image.tobytes()
    assert len(previews) == 2
    assert all(p.mode == "RGB" and max(p.size) <= PREVIEW_MAX_SIDE and p.width > p.height for p in previews)


@pytest.mark.parametrize("family", BUILT)
def test_guidance_becomes_the_familys_call_arguments(engines, family, monkeypatch):
    fam = FAMILIES[family]
    engine = engines(family)
    calls = spy_calls(engine, monkeypatch)
    images = references(1) if fam.needs_image else ()
    guidance = fam.guidance.maximum if fam.guidance_mode == "none" else 2.5
    engine.generate([job(family, images=images, guidance=guidance)], keep_going)
    kwargs = calls[0]
    if fam.guidance_mode == "distilled":
        assert kwargs["guidance_scale"] == 2.5 and "negative_prompt" not in kwargs
    elif fam.guidance_mode == "true_cfg":
        assert kwargs["true_cfg_scale"] == 2.5 and kwargs["negative_prompt"] == [fam.default_negative_prompt]
    elif fam.guidance_mode == "cfg":
        assert kwargs["guidance_scale"] == 2.5
        assert ("negative_prompt" in kwargs) == fam.negative_prompt
    if fam.takes_max_area:
        assert kwargs["max_area"] == kwargs["width"] * kwargs["height"]


@pytest.mark.parametrize("family", [f for f in TEXT_FAMILIES if FAMILIES[f].batched_prompts])
def test_alike_jobs_share_one_call_with_their_own_seeds(engines, family, monkeypatch):
    engine = engines(family)
    calls = spy_calls(engine, monkeypatch)
    results = engine.generate([job(family, "a", seed=1), job(family, "b", seed=2)], keep_going)
    assert len(calls) == 1 and len(calls[0]["generator"]) == 2
    assert results[0].image.tobytes() != results[1].image.tobytes()


@pytest.mark.parametrize("family", [f for f in MULTI_FAMILIES if not FAMILIES[f].images_per_prompt])
def test_edits_with_their_own_references_run_one_a_call(engines, family, monkeypatch):
    """FLUX.2 and Qwen-Image-Edit take one reference list per call: two edits are two calls."""
    engine = engines(family)
    calls = spy_calls(engine, monkeypatch)
    engine.generate([job(family, "a", images=references(1), guidance=1.0),
                     job(family, "b", images=references(1), guidance=1.0)], keep_going)
    assert len(calls) == 2
