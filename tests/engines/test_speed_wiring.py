"""Speed options from the registry file to the pipeline: the loader parses them with the engine
options, applies them after loading and warms up the compiled sizes; the engine resets the step
cache after a failed call and reports out of memory from its step callback. Real tiny FLUX
pipelines on CPU (the CUDA-only options are covered by tests/engines/test_accel.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from darkroom.engines import create_engine
from darkroom.engines.base import GenerationJob
from darkroom.engines.registry import Registry, load_registry
from darkroom.errors import EngineError

torch = pytest.importorskip("torch")

STEPS = 4
REGISTRY = """\
[models.plain]
pipeline = "flux"
path = "tiny-flux"
[models.plain.options]
max_sequence_length = 16

[models.fast]
pipeline = "flux"
path = "tiny-flux"
[models.fast.options]
max_sequence_length = 16
fuse_qkv = true
cache = "first-block"
cache_threshold = 0.8

[models.warm]
pipeline = "flux"
path = "tiny-flux"
[models.warm.options]
max_sequence_length = 16
compile = "regional"
compile_backend = "aot_eager"
compile_sizes = ["64x64", "64x128"]

[models.old-compile]
pipeline = "flux"
path = "tiny-flux"
[models.old-compile.options]
torch_compile = true
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    from darkroom.testing.tiny_pipeline import build_tiny_flux

    root = tmp_path_factory.mktemp("speed-wiring")
    build_tiny_flux(root / "tiny-flux")
    (root / "models.toml").write_text(REGISTRY)
    return load_registry(root / "models.toml")


def job(seed: int = 3, width: int = 64, height: int = 64, prompt: str = "a red circle") -> GenerationJob:
    return GenerationJob(request_id=f"r{seed}", prompt=prompt, width=width, height=height, seed=seed,
                         steps=STEPS, guidance=3.5)


def keep_going(request_id: str, step: int, total: int) -> bool:
    return True


def pixels(image: Any) -> Any:
    import numpy as np

    return np.asarray(image, dtype=np.int16)


def test_registry_options_reach_the_transformer(registry: Registry) -> None:
    from diffusers.models.attention import AttentionModuleMixin

    engine = create_engine(registry.get("fast"), device="cpu")
    engine.load()
    transformer = engine.pipeline.transformer
    attentions = [m for m in transformer.modules() if isinstance(m, AttentionModuleMixin)]
    assert attentions and all(m.fused_projections and m.to_qkv is not None for m in attentions)
    assert not any(hasattr(m, "to_q") for m in attentions)  # the unfused copies are gone
    assert transformer.is_cache_enabled
    computed: list[int] = []
    transformer.single_transformer_blocks[-1].proj_out.register_forward_pre_hook(lambda *_: computed.append(1))
    [result] = engine.generate([job()], keep_going)
    assert result.image is not None and result.image.size == (64, 64)
    assert 1 <= len(computed) < STEPS  # the cache skipped the later blocks at some steps
    plain = create_engine(registry.get("plain"), device="cpu")
    plain.load()
    assert not plain.pipeline.transformer.is_cache_enabled
    assert not any(getattr(m, "fused_projections", False) for m in plain.pipeline.transformer.modules())


@pytest.mark.parametrize(("options", "named"), [
    ({"cache": "last-block"}, "cache"),
    ({"fuse_qkv": "yes"}, "fuse_qkv"),
    ({"compile_sizes": ["64x64"]}, "compile_sizes"),  # without compile
    ({"compile": "regional", "compile_sizes": ["64 by 64"]}, "compile_sizes"),
    ({"quantize": "fp4"}, "quantize"),
])
def test_a_bad_speed_option_makes_the_model_unavailable(registry: Registry, options: dict, named: str) -> None:
    from dataclasses import replace

    spec = registry.get("plain")
    with pytest.raises(EngineError) as caught:
        create_engine(replace(spec, options={**spec.options, **options}), device="cpu").load()
    assert caught.value.code == "model_unavailable"
    assert f"option {named} " in caught.value.message and "'plain'" in caught.value.message


def test_fp8_on_cpu_is_refused_at_load(registry: Registry) -> None:
    from dataclasses import replace

    spec = registry.get("plain")
    engine = create_engine(replace(spec, options={**spec.options, "quantize": "fp8"}), device="cpu")
    with pytest.raises(EngineError) as caught:
        engine.load()
    assert caught.value.code == "model_unavailable" and 'quantize = "fp8"' in caught.value.message
    assert not engine.loaded


def test_torch_compile_is_read_as_full_compile(registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="darkroom.engines.loader"):
        engine = create_engine(registry.get("old-compile"), device="cpu")
    assert engine.options.speed.compile == "full"
    assert "torch_compile is deprecated" in caplog.text


def test_compiled_sizes_are_warmed_up_at_load(registry: Registry) -> None:
    """Loading compiles (the warm-up at both sizes); a request at one of them compiles nothing more."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    engine = create_engine(registry.get("warm"), device="cpu")
    engine.load()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # compiled during load
    [result] = engine.generate([job(width=64, height=128)], keep_going)
    assert result.image is not None and result.image.size == (64, 128)
    assert counters["stats"]["unique_graphs"] == graphs


def fail_at_call(transformer: Any, call: int, error: BaseException) -> Any:
    """Make the transformer's ``call``-th forward (1-based) raise ``error``, once."""
    calls = [0]

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == call:
            raise error

    return transformer.register_forward_pre_hook(hook, with_kwargs=True)


def test_a_failed_call_leaves_no_step_cache_behind(registry: Registry) -> None:
    """The first-block cache keeps the last step's residuals between steps; a call that fails
    midway must not hand them to the next call, which then makes what a fresh engine makes.
    (Left behind, the failed call's first step, same seed and another prompt, is close enough
    for the next call's first step to be skipped with the failed call's residuals.)"""
    fresh = create_engine(registry.get("fast"), device="cpu")
    expected = fresh.generate([job(seed=5)], keep_going)[0].image
    engine = create_engine(registry.get("fast"), device="cpu")
    engine.load()
    handle = fail_at_call(engine.pipeline.transformer, 2, RuntimeError("a kernel failed"))
    with pytest.raises(EngineError) as caught:
        engine.generate([job(seed=5, prompt="a blue square")], keep_going)
    handle.remove()
    assert caught.value.code == "engine_error"
    assert (pixels(engine.generate([job(seed=5)], keep_going)[0].image) == pixels(expected)).all()


def test_out_of_memory_in_the_step_callback_is_out_of_memory(registry: Registry) -> None:
    """A preview's VAE decode runs inside the step callback; running out of memory there is the
    run's out of memory (the worker then frees the device), not an unexplained callback error."""
    engine = create_engine(registry.get("plain"), device="cpu")

    def on_step(request_id: str, step: int, total: int) -> bool:
        if step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return True

    with pytest.raises(EngineError) as caught:
        engine.generate([job()], on_step)
    assert caught.value.code == "out_of_memory" and "Tried to allocate" in caught.value.message
    assert engine.generate([job()], keep_going)[0].image is not None  # and the engine carries on


def test_shared_components_reach_the_loader(registry: Registry, tmp_path: Path) -> None:
    """create_engine(..., shared=) gives two models of one folder the same text encoders; without
    it each engine loads its own."""
    from darkroom.engines.residency import SharedComponents

    shared = SharedComponents()
    a = create_engine(registry.get("plain"), device="cpu", shared=shared)
    b = create_engine(registry.get("fast"), device="cpu", shared=shared)
    a.load(), b.load()
    assert a.pipeline.text_encoder is b.pipeline.text_encoder
    assert a.pipeline.text_encoder_2 is b.pipeline.text_encoder_2
    assert a.pipeline.transformer is not b.pipeline.transformer
    assert shared.loads == 2
    alone = create_engine(registry.get("plain"), device="cpu")
    alone.load()
    assert alone.pipeline.text_encoder is not a.pipeline.text_encoder
    same = [(pixels(e.generate([job(seed=9)], keep_going)[0].image)) for e in (a, alone)]
    assert (same[0] == same[1]).all()  # loaded through the cache or by diffusers: the same weights
