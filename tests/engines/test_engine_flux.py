"""DiffusersEngine (FLUX families) on tiny random pipelines, loaded through the registry like real models."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from darkroom.engines import create_engine
from darkroom.engines.base import GenerationJob
from darkroom.engines.diffusers_engine import DiffusersEngine
from darkroom.errors import EngineError

STEPS = 2


def job(request_id: str = "r1", *, prompt: str = "a red fox in the snow", width: int = 1024, height: int = 1024,
        seed: int = 1, steps: int = STEPS, guidance: float = 3.5, images: tuple[Image.Image, ...] = ()) -> GenerationJob:
    return GenerationJob(request_id=request_id, prompt=prompt, width=width, height=height, seed=seed,
                         steps=steps, guidance=guidance, images=images)


def keep_going(request_id: str, step: int, total: int) -> bool:
    return True


def pixels(result) -> bytes:
    assert result.image is not None
    return result.image.tobytes()


def test_loads_through_the_registry(tiny_registry):
    engine = create_engine(tiny_registry.get("tiny"), device="cpu")
    assert isinstance(engine, DiffusersEngine)
    assert engine.model_id == "tiny" and not engine.loaded
    engine.load()
    pipe = engine._pipe
    engine.load()  # idempotent
    assert engine._pipe is pipe
    assert type(pipe).__name__ == "FluxPipeline"
    assert engine.dtype == torch.float32
    engine.close()
    assert not engine.loaded


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (1360, 768), (672, 1568)])
def test_output_has_the_jobs_size(flux_engine, width, height):
    [result] = flux_engine.generate([job(width=width, height=height)], keep_going)
    assert result.image is not None and result.image.size == (width, height)
    assert result.image.mode == "RGB"
    assert not result.stopped and result.engine_ms > 0


def test_same_job_same_pixels_and_seeds_differ(flux_engine, tiny_registry):
    first = flux_engine.generate([job(seed=7)], keep_going)[0]
    again = flux_engine.generate([job(seed=7)], keep_going)[0]
    other = flux_engine.generate([job(seed=8)], keep_going)[0]
    assert pixels(first) == pixels(again)
    assert pixels(first) != pixels(other)
    fresh = create_engine(tiny_registry.get("tiny"), device="cpu")  # a new process would do the same
    try:
        assert pixels(fresh.generate([job(seed=7)], keep_going)[0]) == pixels(first)
    finally:
        fresh.close()


def test_prompt_changes_the_image(flux_engine):
    a = flux_engine.generate([job(prompt="a cat")], keep_going)[0]
    b = flux_engine.generate([job(prompt="a lighthouse at dusk")], keep_going)[0]
    assert pixels(a) != pixels(b)


def test_a_batch_gives_results_in_order_equal_to_single_runs(flux_engine):
    """Batching identity: a job batched with others (a and c share one pipeline call) gives the
    image it gives alone, within 1/255 per channel (a batch changes matmul shapes, so rounding).

    At the native size, so that no upscaling follows: darkroom-mini's edge-steepening upscaler
    (engines/upscale.py) can turn a rounding flip of 1 at an edge into a larger step, which is
    the upscaler's doing, not the batch's (docs/models.md, "Batching")."""
    import numpy as np

    jobs = [job("a", seed=1, width=64, height=64), job("b", seed=2, width=1360, height=768),
            job("c", seed=3, width=64, height=64)]
    results = flux_engine.generate(jobs, keep_going)
    assert [r.request_id for r in results] == ["a", "b", "c"]
    for j, r in zip(jobs, results):
        alone = flux_engine.generate([j], keep_going)[0]
        diff = np.abs(np.asarray(r.image, dtype=np.int16) - np.asarray(alone.image, dtype=np.int16))
        assert diff.max() <= 1, f"{j.request_id}: batched and solo differ by up to {diff.max()}/255"


def test_progress_counts_steps(flux_engine):
    calls = []

    def on_step(request_id, step, total):
        calls.append((request_id, step, total))
        return True

    flux_engine.generate([job("a", steps=3), job("b", steps=2)], on_step)
    assert calls == [("a", 1, 3), ("a", 2, 3), ("a", 3, 3), ("b", 1, 2), ("b", 2, 2)]


def test_stop_via_callback(flux_engine):
    calls = []

    def on_step(request_id, step, total):
        calls.append((request_id, step))
        return not (request_id == "stop-me" and step == 1)

    results = flux_engine.generate([job("stop-me", steps=4), job("keep", steps=2)], on_step)
    assert results[0].request_id == "stop-me" and results[0].stopped and results[0].image is None
    assert not results[1].stopped and results[1].image is not None
    assert calls == [("stop-me", 1), ("keep", 1), ("keep", 2)]  # no steps after the stop
    assert pixels(results[1]) == pixels(flux_engine.generate([job("keep", steps=2)], keep_going)[0])


def test_direct_path_without_native_area(make_engine):
    engine = make_engine("tiny-direct")
    seen = []
    original = engine._pipe.prepare_latents

    def spy(*args, **kwargs):
        seen.append(args[2:4])  # height, width
        return original(*args, **kwargs)

    engine._pipe.prepare_latents = spy
    a, b = engine.generate([job(width=128, height=96), job(width=100, height=70)], keep_going)
    assert a.image.size == (128, 96) and b.image.size == (100, 70)
    assert seen == [(96, 128), (64, 96)]  # 100x70 ran at multiples of 16, then resized
    again = engine.generate([job(width=128, height=96)], keep_going)[0]
    assert pixels(again) == pixels(a)


def test_native_area_generates_small(flux_engine, monkeypatch):
    seen = []
    original = flux_engine._pipe.prepare_latents

    def spy(*args, **kwargs):
        seen.append(args[2:4])  # height, width
        return original(*args, **kwargs)

    monkeypatch.setattr(flux_engine._pipe, "prepare_latents", spy)
    flux_engine.generate([job(width=1024, height=1024), job(width=1360, height=768)], keep_going)
    assert seen == [(64, 64), (48, 80)]


def test_batching_alike_jobs(make_engine):
    engine = make_engine("tiny-batched")
    calls = []
    original = type(engine._pipe).__call__

    def counting_call(pipe, *args, **kwargs):
        calls.append(len(kwargs["prompt"]))
        return original(pipe, *args, **kwargs)

    engine._pipe.__class__ = type("CountingPipeline", (type(engine._pipe),), {"__call__": counting_call})
    jobs = [job("a", seed=1), job("b", seed=2), job("odd", seed=3, steps=3), job("c", seed=4)]
    results = engine.generate(jobs, keep_going)
    assert calls == [3, 1]  # a, b, c in one call; the 3-step job alone
    assert [r.request_id for r in results] == ["a", "b", "odd", "c"]
    assert all(r.image is not None and r.image.size == (1024, 1024) for r in results)
    assert len({pixels(r) for r in results}) == 4
    assert [pixels(r) for r in engine.generate(jobs, keep_going)] == [pixels(r) for r in results]

    def stop_b(request_id, step, total):
        return request_id != "b"

    stopped = engine.generate(jobs[:2], stop_b)
    assert stopped[1].stopped and stopped[1].image is None
    assert not stopped[0].stopped and stopped[0].image is not None


def test_kontext_edit_at_native_size(kontext_engine, monkeypatch):
    seen = []
    original = kontext_engine._pipe.prepare_latents

    def spy(image, batch_size, channels, height, width, *rest):
        seen.append((tuple(image.shape) if image is not None else None, height, width))
        return original(image, batch_size, channels, height, width, *rest)

    monkeypatch.setattr(kontext_engine._pipe, "prepare_latents", spy)
    source = Image.new("RGB", (800, 600), (200, 40, 40))
    edit = kontext_engine.generate([job(prompt="make it blue", images=(source,))], keep_going)[0]
    plain = kontext_engine.generate([job(prompt="make it blue")], keep_going)[0]
    assert edit.image.size == (1024, 1024) and plain.image.size == (1024, 1024)
    # Output at native_area (64x64) and the input image at that area in its own aspect
    # (80x48), not snapped to Kontext's ~1 MP preferred resolutions.
    assert seen == [((1, 3, 48, 80), 64, 64), (None, 64, 64)]
    assert pixels(edit) != pixels(plain)
    assert pixels(kontext_engine.generate([job(prompt="make it blue", images=(source,))], keep_going)[0]) == pixels(edit)


def test_kontext_direct_and_several_references(make_engine):
    engine = make_engine("tiny-kontext-direct")
    one = Image.new("RGB", (96, 96), (10, 200, 10))
    two = Image.new("RGB", (48, 96), (10, 10, 200))
    [single, stitched] = engine.generate([job("a", width=96, height=64, images=(one,)),
                                          job("b", width=96, height=64, images=(one, two))], keep_going)
    assert single.image.size == stitched.image.size == (96, 64)
    assert pixels(single) != pixels(stitched)


def test_kontext_batch(tiny_registry):
    from dataclasses import replace

    spec = tiny_registry.get("tiny-kontext")
    engine = create_engine(replace(spec, options={**spec.options, "max_batch": 2}), device="cpu")
    try:
        red, blue = Image.new("RGB", (300, 200), (200, 0, 0)), Image.new("RGB", (330, 220), (0, 0, 200))
        a, b = engine.generate([job("a", images=(red,)), job("b", images=(blue,), seed=2)], keep_going)
        assert a.image.size == b.image.size == (1024, 1024)
        assert pixels(a) != pixels(b)
    finally:
        engine.close()


def test_true_cfg_options(tiny_registry):
    from dataclasses import replace

    spec = tiny_registry.get("tiny")
    plain = create_engine(spec, device="cpu")
    fixed = create_engine(replace(spec, options={**spec.options, "true_cfg_scale": 3.0}), device="cpu")
    by_job = create_engine(replace(spec, options={**spec.options, "true_cfg_scale": "guidance",
                                                  "negative_prompt": "blurry"}), device="cpu")
    try:
        for engine in (plain, fixed, by_job):
            engine.load()
        passes = []
        forward = fixed._pipe.transformer.forward
        fixed._pipe.transformer.forward = lambda *a, **k: passes.append(1) or forward(*a, **k)
        base = pixels(plain.generate([job()], keep_going)[0])
        assert pixels(fixed.generate([job()], keep_going)[0]) != base
        assert len(passes) == 2 * STEPS  # conditional and unconditional pass each step
        a, b = (pixels(by_job.generate([job(guidance=g)], keep_going)[0]) for g in (2.0, 5.0))
        assert a != b  # the job's guidance is the CFG scale
        assert len(by_job.generate([job("x", seed=1), job("y", seed=2)], keep_going)) == 2
    finally:
        for engine in (plain, fixed, by_job):
            engine.close()


def test_text_to_image_model_refuses_input_images(flux_engine):
    with pytest.raises(EngineError, match="text only") as info:
        flux_engine.generate([job(images=(Image.new("RGB", (64, 64)),))], keep_going)
    assert info.value.code == "engine_error"


def test_packaged_text_encoders_fill_empty_slots(tiny_registry):
    bare = create_engine(tiny_registry.get("tiny-mini-bare"), device="cpu")
    with pytest.raises(EngineError, match="has no text_encoder, tokenizer, text_encoder_2, tokenizer_2") as info:
        bare.load()
    assert info.value.code == "model_unavailable"

    engine = create_engine(tiny_registry.get("tiny-mini"), device="cpu")
    try:
        engine.load()
        assert type(engine._pipe.text_encoder).__name__ == "BertModel"
        assert engine._pipe.text_encoder.config.hidden_size == 384
        assert engine._pipe.text_encoder_2 is engine._pipe.text_encoder  # one MiniLM in memory
        assert type(engine._pipe.tokenizer).__name__ == "BertTokenizer"
        a, b = (engine.generate([job(seed=5)], keep_going)[0] for _ in range(2))
        assert a.image.size == (1024, 1024) and pixels(a) == pixels(b)
    finally:
        engine.close()


def test_missing_weights_are_model_unavailable(tiny_registry):
    spec = tiny_registry.get("missing")
    engine = create_engine(spec, device="cpu")
    with pytest.raises(EngineError) as info:
        engine.load()
    assert info.value.code == "model_unavailable"
    assert spec.path in info.value.message


def test_unreachable_hub_id_is_model_unavailable(tiny_registry):
    from dataclasses import replace

    spec = replace(tiny_registry.get("tiny"), path="darkroom-test/no-such-model")
    assert not spec.is_local
    with pytest.raises(EngineError) as info:
        create_engine(spec, device="cpu").load()
    assert info.value.code == "model_unavailable"
    assert "darkroom-test/no-such-model" in info.value.message


def test_no_jobs_no_work(tiny_registry):
    engine = create_engine(tiny_registry.get("tiny"), device="cpu")
    assert engine.generate([], keep_going) == []
    assert not engine.loaded


@pytest.mark.parametrize("options", [{"native_area": "big"}, {"dtype": "int8"}, {"text_encoder": "clip"},
                                     {"max_batch": 0}, {"enable_cpu_offload": "yes"}, {"max_sequence_length": 999},
                                     {"true_cfg_scale": "lots"}, {"negative_prompt": 3}])
def test_invalid_options_are_model_unavailable(tiny_registry, options):
    from dataclasses import replace

    spec = replace(tiny_registry.get("tiny"), options=options)
    with pytest.raises(EngineError) as info:
        create_engine(spec)
    assert info.value.code == "model_unavailable"
    assert next(iter(options)) in info.value.message


def test_unknown_engine(tiny_registry):
    from dataclasses import replace

    with pytest.raises(EngineError, match="unknown engine") as info:
        create_engine(replace(tiny_registry.get("tiny"), engine="sdxl"))
    assert info.value.code == "model_unavailable"


def test_dtype_option_and_defaults(tiny_registry):
    from dataclasses import replace

    spec = tiny_registry.get("tiny")
    assert create_engine(spec, device="cpu").dtype == torch.float32
    assert create_engine(spec, device="cuda").dtype == torch.bfloat16  # resolved only, nothing loaded
    assert create_engine(replace(spec, options={"dtype": "float16"}), device="cpu").dtype == torch.float16


@pytest.mark.parametrize(("error", "code"), [(RuntimeError("boom in the transformer"), "engine_error"),
                                             (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
                                              "out_of_memory")])
def test_pipeline_errors_become_engine_errors(flux_engine, monkeypatch, error, code):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(flux_engine._pipe.transformer, "forward", fail)
    with pytest.raises(EngineError) as info:
        flux_engine.generate([job()], keep_going)
    assert info.value.code == code
    assert str(error) in info.value.message
    assert info.value.__cause__ is error


def test_callback_errors_propagate_unchanged(flux_engine):
    class Gone(Exception):
        pass

    def on_step(request_id, step, total):
        raise Gone("lease lost")

    with pytest.raises(Gone):
        flux_engine.generate([job()], on_step)
    assert flux_engine.generate([job()], keep_going)[0].image is not None  # the engine is still usable


def test_generate_loads_on_demand_and_close_frees(tiny_registry):
    engine = create_engine(tiny_registry.get("tiny"), device="cpu")
    assert engine.generate([job()], keep_going)[0].image is not None
    engine.close()
    assert not engine.loaded
    assert engine.generate([job()], keep_going)[0].image is not None
    engine.close()


def test_stochastic_scheduler_noise_comes_from_the_jobs_seed(make_engine):
    """diffusers' Flux pipelines call ``scheduler.step`` without the generator, so a stochastic
    scheduler would draw from torch's global RNG; the engine hands it each job's generator."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    engine = make_engine("tiny")
    plain = pixels(engine.generate([job(seed=7, steps=3)], keep_going)[0])
    pipe = engine._pipe
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config({**pipe.scheduler.config, "stochastic_sampling": True})
    torch.manual_seed(1)
    first = pixels(engine.generate([job(seed=7, steps=3)], keep_going)[0])
    torch.manual_seed(2)  # another global RNG state: the job's pixels do not move
    again = pixels(engine.generate([job(seed=7, steps=3)], keep_going)[0])
    other = pixels(engine.generate([job(seed=8, steps=3)], keep_going)[0])
    assert first == again
    assert first != other
    assert first != plain  # the per-step noise is really drawn (the sampler is not the plain ODE)
    assert "step" not in vars(pipe.scheduler)  # the per-call hook is gone afterwards
