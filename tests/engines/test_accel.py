"""Speed options (darkroom.engines.accel) on the tiny FLUX pipeline: each one applies and the
pipeline's transformer outputs stay within cosine 0.99 of eager, step by step; bad values are
refused naming the option. CPU here; the ``gpu`` tests run the CUDA-only paths (inductor,
fp8) on a GPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from darkroom.engines.accel import (
    SpeedOptions,
    apply_speed_options,
    parse_speed_options,
    torchao_available,
    warm_up,
)
from darkroom.errors import EngineError

torch = pytest.importorskip("torch")

SIZE = 64  # pixels: 8x8 latents, 16 packed tokens
STEPS = 4
MIN_COSINE = 0.99
CALL = dict(prompt="a red circle", num_inference_steps=STEPS, max_sequence_length=16, guidance_scale=3.5)

needs_torchao = pytest.mark.skipif(not torchao_available(), reason='torchao is not installed (the "accel" extra)')


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from darkroom.testing.tiny_pipeline import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("accel") / "tiny-flux")


def load(path: Path) -> Any:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Any, width: int = SIZE, height: int = SIZE) -> tuple[Any, list[Any]]:
    """The image and the transformer's output at each step."""
    outputs: list[Any] = []

    def record(module: Any, args: Any, output: Any) -> None:
        outputs.append(output[0].detach().float().clone())

    handle = pipe.transformer.register_forward_hook(record)
    try:
        image = pipe(width=width, height=height, generator=torch.Generator("cpu").manual_seed(7), **CALL).images[0]
    finally:
        handle.remove()
    return image, outputs


def cosines(reference: list[Any], other: list[Any]) -> list[float]:
    assert len(reference) == len(other) == STEPS
    return [torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
            for a, b in zip(reference, other)]


@pytest.fixture(scope="module")
def eager(tiny_path: Path) -> list[Any]:
    return generate(load(tiny_path))[1]


# -- parsing -------------------------------------------------------------------------------


def test_everything_is_off_unless_set() -> None:
    options = parse_speed_options("m", {"max_sequence_length": 64, "native_area": 4096})  # the loader's keys
    assert options == SpeedOptions() and not options.enabled


def test_options_parse() -> None:
    options = parse_speed_options("m", {
        "compile": "regional", "compile_sizes": ["1024x1024", "1216 x 832", "1024x1024"],
        "quantize": "int8", "cache": "first-block", "cache_threshold": 0.1, "fuse_qkv": True,
        "vae_channels_last": True,
    })
    assert options.compile == "regional" and options.compile_sizes == ((1024, 1024), (1216, 832))
    assert options.dynamic  # two sizes: one dynamic compilation serves both
    assert (options.quantize, options.cache, options.cache_threshold) == ("int8", "first-block", 0.1)
    assert options.fuse_qkv and options.vae_channels_last and options.enabled
    assert not parse_speed_options("m", {"compile": "full", "compile_sizes": ["512x512"]}).dynamic
    assert parse_speed_options("m", {"compile": "full", "compile_sizes": ["512x512"], "compile_dynamic": True}).dynamic


@pytest.mark.parametrize(("raw", "named"), [
    ({"compile": "yes"}, "compile"),
    ({"compile": True}, "compile"),
    ({"quantize": "fp4"}, "quantize"),
    ({"cache": "taylorseer"}, "cache"),
    ({"cache": "first-block", "cache_threshold": 0}, "cache_threshold"),
    ({"cache": "first-block", "cache_threshold": "0.1"}, "cache_threshold"),
    ({"cache_threshold": 0.1}, "cache_threshold"),
    ({"fuse_qkv": "true"}, "fuse_qkv"),
    ({"vae_channels_last": 1}, "vae_channels_last"),
    ({"compile": "regional", "compile_sizes": "1024x1024"}, "compile_sizes"),
    ({"compile": "regional", "compile_sizes": ["1024*1024"]}, "compile_sizes"),
    ({"compile": "regional", "compile_sizes": ["8x1024"]}, "compile_sizes"),
    ({"compile": "regional", "compile_sizes": []}, "compile_sizes"),
    ({"compile_sizes": ["1024x1024"]}, "compile_sizes"),
    ({"compile": "off", "compile_dynamic": True}, "compile_dynamic"),
    ({"compile": "regional", "compile_backend": ""}, "compile_backend"),
])
def test_bad_values_are_refused_naming_the_option(raw: dict[str, Any], named: str) -> None:
    with pytest.raises(EngineError) as caught:
        parse_speed_options("flux-dev", raw)
    assert caught.value.code == "model_unavailable"
    assert f"option {named} " in caught.value.message and "'flux-dev'" in caught.value.message


# -- applying, on CPU ----------------------------------------------------------------------

# compile_backend "aot_eager" on CPU: dynamo traces the same graphs as with inductor, without
# inductor's C++ code generation (over a minute on a small CPU); the gpu tests use inductor.
CPU_OPTIONS = {
    "fuse_qkv": {"fuse_qkv": True},
    "first-block cache": {"cache": "first-block"},
    "vae channels-last": {"vae_channels_last": True},
    "regional compile": {"compile": "regional", "compile_backend": "aot_eager"},
    "full compile": {"compile": "full", "compile_backend": "aot_eager"},
    "int8": pytest.param({"quantize": "int8"}, marks=needs_torchao),
    "all but quantize": {"fuse_qkv": True, "cache": "first-block", "compile": "regional",
                         "compile_backend": "aot_eager", "vae_channels_last": True},
    "fuse_qkv and int8": pytest.param({"fuse_qkv": True, "quantize": "int8"}, marks=needs_torchao),
}


@pytest.mark.parametrize("raw", CPU_OPTIONS.values(), ids=CPU_OPTIONS.keys())
def test_option_applies_and_keeps_the_transformer_output(raw: dict[str, Any], tiny_path: Path,
                                                          eager: list[Any]) -> None:
    pipe = load(tiny_path)
    apply_speed_options(pipe, parse_speed_options("tiny", raw), "cpu")
    image, outputs = generate(pipe)
    assert image.size == (SIZE, SIZE)
    assert min(cosines(eager, outputs)) >= MIN_COSINE, cosines(eager, outputs)


def test_first_block_cache_skips_the_other_blocks(tiny_path: Path, eager: list[Any]) -> None:
    """At a threshold the tiny model's steps fall under, later steps skip all but the first block
    (the last block's inner layers run only at the steps the cache computes)."""
    pipe = load(tiny_path)
    apply_speed_options(pipe, parse_speed_options("tiny", {"cache": "first-block", "cache_threshold": 0.8}), "cpu")
    computed: list[int] = []
    pipe.transformer.single_transformer_blocks[-1].proj_out.register_forward_pre_hook(lambda *_: computed.append(1))
    _, outputs = generate(pipe)
    assert 1 <= len(computed) < STEPS
    assert min(cosines(eager, outputs)) >= MIN_COSINE, cosines(eager, outputs)


def test_first_block_cache_refuses_flux2() -> None:
    """diffusers 0.42's cache cannot join FLUX.2's first (two-stream) and last (one-stream)
    blocks: refused at load, naming why, instead of a TypeError at a request's second step."""
    from diffusers import Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                          num_attention_heads=2, joint_attention_dim=32,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4))
    with pytest.raises(EngineError) as caught:
        apply_speed_options(SimpleNamespace(transformer=transformer, vae=None), SpeedOptions(cache="first-block"),
                            "cpu")
    assert caught.value.code == "model_unavailable" and "different streams" in caught.value.message


def test_fused_qkv_drops_the_unfused_projections(tiny_path: Path) -> None:
    from diffusers.models.attention import AttentionModuleMixin

    pipe = load(tiny_path)
    before = sum(p.numel() for p in pipe.transformer.parameters())
    apply_speed_options(pipe, SpeedOptions(fuse_qkv=True), "cpu")
    attentions = [m for m in pipe.transformer.modules() if isinstance(m, AttentionModuleMixin)]
    assert attentions and all(m.fused_projections and m.to_qkv is not None for m in attentions)
    assert not any(hasattr(m, "to_q") or hasattr(m, "add_q_proj") for m in attentions)
    assert sum(p.numel() for p in pipe.transformer.parameters()) == before  # the same weights, fused


@needs_torchao
def test_int8_quantises_the_blocks_only(tiny_path: Path) -> None:
    pipe = load(tiny_path)
    apply_speed_options(pipe, SpeedOptions(quantize="int8"), "cpu")
    transformer = pipe.transformer
    block_linear = transformer.transformer_blocks[0].attn.to_q
    assert "Int8" in type(block_linear.weight).__name__  # torchao's quantised tensor
    assert type(transformer.proj_out.weight) is torch.nn.Parameter  # left in the pipeline's dtype
    assert type(transformer.x_embedder.weight) is torch.nn.Parameter


def test_fp8_is_refused_on_cpu(tiny_path: Path) -> None:
    pipe = load(tiny_path)
    with pytest.raises(EngineError) as caught:
        apply_speed_options(pipe, SpeedOptions(quantize="fp8"), "cpu")
    assert caught.value.code == "model_unavailable" and "compute capability" in caught.value.message


@pytest.mark.skipif(torchao_available(), reason="torchao is installed here")
def test_quantize_without_torchao_says_what_to_install(tiny_path: Path) -> None:
    with pytest.raises(EngineError) as caught:
        apply_speed_options(load(tiny_path), SpeedOptions(quantize="int8"), "cpu")
    assert "darkroom[accel]" in caught.value.message


def test_warm_up_compiles_once_for_every_size(tiny_path: Path) -> None:
    """After the warm-up at two sizes, a third size runs without compiling again."""
    from torch._dynamo.utils import counters

    pipe = load(tiny_path)
    options = parse_speed_options("tiny", {"compile": "regional", "compile_backend": "aot_eager",
                                           "compile_sizes": ["64x64", "128x64"]})
    apply_speed_options(pipe, options, "cpu")
    timings = warm_up(pipe, options, max_sequence_length=16)
    assert list(timings) == [(64, 64), (128, 64)]
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    image, outputs = generate(pipe, width=96, height=128)
    assert image.size == (96, 128) and len(outputs) == STEPS
    assert counters["stats"]["unique_graphs"] == graphs


def test_warm_up_without_compile_does_nothing(tiny_path: Path) -> None:
    assert warm_up(load(tiny_path), SpeedOptions(fuse_qkv=True), [(64, 64)]) == {}


# -- applying, on CUDA ---------------------------------------------------------------------


def cuda_transformer(seed: int = 0) -> Any:
    """A small FLUX transformer in bf16 on the GPU (no tokenizer needed: inputs are made here)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                       attention_head_dim=128, num_attention_heads=4, joint_attention_dim=256,
                                       pooled_projection_dim=128, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    return model.to(torch.bfloat16).eval()


def cuda_loop(transformer: Any, tokens: int = 1024, steps: int = STEPS) -> list[Any]:
    """A flow-matching Euler loop from fixed noise; the transformer's output at each step."""
    g = torch.Generator("cuda").manual_seed(3)
    latents = torch.randn(1, tokens, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    text = torch.randn(1, 64, 256, device="cuda", generator=g, dtype=torch.bfloat16)
    pooled = torch.randn(1, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    side = int(tokens ** 0.5)
    img_ids = torch.zeros(side, side, 3, device="cuda")
    img_ids[..., 1] = torch.arange(side, device="cuda")[:, None]
    img_ids[..., 2] = torch.arange(side, device="cuda")[None, :]
    txt_ids = torch.zeros(64, 3, device="cuda")
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    outputs = []
    with torch.no_grad():
        for i in range(steps):
            with transformer.cache_context("cond"):
                out = transformer(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled,
                                  timestep=sigmas[i:i + 1].to("cuda", torch.bfloat16),
                                  img_ids=img_ids.reshape(-1, 3), txt_ids=txt_ids,
                                  guidance=torch.full((1,), 3.5, device="cuda"), return_dict=False)[0]
            outputs.append(out.float())
            latents = (latents.float() + (sigmas[i + 1] - sigmas[i]).item() * out.float()).to(torch.bfloat16)
    return outputs


CUDA_OPTIONS = {
    "regional compile (inductor)": {"compile": "regional"},
    "fp8": {"quantize": "fp8"},
    "int8": {"quantize": "int8"},
    "first-block cache": {"cache": "first-block"},
    "fuse_qkv": {"fuse_qkv": True},
    "all": {"compile": "regional", "quantize": "fp8", "cache": "first-block", "fuse_qkv": True},
}


@pytest.mark.gpu
@pytest.mark.parametrize("raw", CUDA_OPTIONS.values(), ids=CUDA_OPTIONS.keys())
def test_option_on_cuda_keeps_the_transformer_output(raw: dict[str, Any]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    options = parse_speed_options("cuda-tiny", raw)
    if options.quantize is not None and not torchao_available():
        pytest.skip('torchao is not installed (the "accel" extra)')
    reference = cuda_loop(cuda_transformer())
    model = cuda_transformer()
    apply_speed_options(SimpleNamespace(transformer=model, vae=None), options, "cuda")
    found = cuda_loop(model)
    similarity = [torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
                  for a, b in zip(reference, found)]
    assert min(similarity) >= MIN_COSINE, similarity
