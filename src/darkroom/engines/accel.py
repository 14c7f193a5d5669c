"""Speed options of a model: ``torch.compile``, torchao quantisation, step caching, fused QKV.

Every option is off unless the model's record sets it (``[models.<id>.options]`` in the
registry, beside the loader's own options; ``dtype`` stays the loader's):

    compile = "regional"           # off | regional (the transformer's repeated blocks) | full
    compile_sizes = ["1024x1024", "1216x832"]   # warm-up at load: compiled before the first request
    compile_dynamic = true         # dynamic shapes (default: true unless exactly one size is given)
    compile_backend = "inductor"   # torch.compile's backend ("aot_eager": tracing without code generation)
    quantize = "fp8"               # fp8 (dynamic activations, CUDA compute capability >= 8.9) | int8 (weights)
    cache = "first-block"          # diffusers' First Block Cache: skip the other blocks when the
    cache_threshold = 0.05         #   first block's output barely moved since the last step
    fuse_qkv = true                # one matmul for q, k and v in each attention
    vae_channels_last = true       # the VAE in channels-last memory format (convolutions on CUDA)

``parse_speed_options`` checks them (torch-free, so a registry can be checked anywhere);
``apply_speed_options`` applies them to a loaded pipeline, once, right after loading; and
``warm_up`` runs the pipeline once per ``compile_sizes`` entry so that compilation happens at
load rather than in the first request of each size.

Why regional compilation: FLUX's transformer is 19 + 38 copies of two block classes; compiling
the block classes (``ModelMixin.compile_repeated_blocks``) compiles two graphs instead of one
57-block graph, so start-up takes seconds to a minute instead of minutes, at nearly the same
speed. With dynamic shapes one compilation serves every size; without, each new size (or
batch size) compiles again once (dynamo then turns the changed dimension dynamic).

What the options cost in exactness: fp8 and int8 change the transformer's numbers (bench/gpu_flux.py
measures the cosine of its outputs against bf16 step by step); the first-block cache reuses the
last step's residual when it skips, and its decision is taken over the whole batch, so a request's
pixels can depend on the requests it was batched with (``max_batch = 1`` where that matters).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from darkroom.errors import EngineError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

COMPILE_MODES = ("off", "regional", "full")
QUANTIZE_MODES = ("fp8", "int8")
CACHE_MODES = ("first-block",)
#: fp8 matrix products (``torch._scaled_mm``) need Ada (8.9), Hopper (9.0) or newer.
FP8_MIN_CAPABILITY = (8, 9)
#: diffusers' default for ``FirstBlockCacheConfig.threshold``.
DEFAULT_CACHE_THRESHOLD = 0.05

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class SpeedOptions:
    """The speed options of one model, checked (see the module docstring)."""

    compile: str = "off"
    compile_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) pairs
    compile_dynamic: bool | None = None  # None: dynamic unless exactly one size is given
    compile_backend: str = "inductor"
    quantize: str | None = None
    cache: str | None = None
    cache_threshold: float = DEFAULT_CACHE_THRESHOLD
    fuse_qkv: bool = False
    vae_channels_last: bool = False

    @property
    def enabled(self) -> bool:
        """Whether any option is on."""
        return self != SpeedOptions()

    @property
    def dynamic(self) -> bool:
        """Whether compilation uses dynamic shapes."""
        if self.compile_dynamic is not None:
            return self.compile_dynamic
        return len(self.compile_sizes) != 1


#: The option keys this module reads; a model's other options belong to the loader.
SPEED_OPTION_KEYS = tuple(f.name for f in fields(SpeedOptions))


def parse_speed_options(model_id: str, raw: Mapping[str, Any]) -> SpeedOptions:
    """The speed options among a model's ``options`` (other keys are ignored).

    Raises:
        EngineError(code="model_unavailable"): an option has a wrong type or value, or one
            that only refines another (``compile_sizes``, ``cache_threshold``, ...) is given
            without it; the message names the option.
    """
    given = {key: raw[key] for key in SPEED_OPTION_KEYS if key in raw}

    def bad(key: str, why: str) -> EngineError:
        return EngineError(f"model {model_id!r}: option {key} {why} (got {given[key]!r})", code="model_unavailable")

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if key in given and given[key] not in allowed:
            raise bad(key, "must be one of " + ", ".join(f'"{a}"' for a in allowed))

    choice("compile", COMPILE_MODES)
    choice("quantize", QUANTIZE_MODES)
    choice("cache", CACHE_MODES)
    for key in ("compile_dynamic", "fuse_qkv", "vae_channels_last"):
        if key in given and not isinstance(given[key], bool):
            raise bad(key, "must be true or false")
    if "compile_backend" in given and (not isinstance(given["compile_backend"], str) or not given["compile_backend"]):
        raise bad("compile_backend", "must be the name of a torch.compile backend")
    if "cache_threshold" in given:
        value = given["cache_threshold"]
        if type(value) not in (int, float) or not 0 < value < 1:
            raise bad("cache_threshold", "must be a number between 0 and 1")
        given["cache_threshold"] = float(value)
    if "compile_sizes" in given:
        given["compile_sizes"] = _parse_sizes(given["compile_sizes"], bad)
    compiling = given.get("compile", "off") != "off"
    for key in ("compile_sizes", "compile_dynamic", "compile_backend"):
        if key in given and not compiling:
            raise bad(key, 'needs compile = "regional" or "full"')
    if "cache_threshold" in given and "cache" not in given:
        raise bad("cache_threshold", 'needs cache = "first-block"')
    return SpeedOptions(**given)


def _parse_sizes(value: Any, bad: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not value:
        raise bad("compile_sizes", 'must be a list of "WIDTHxHEIGHT" strings')
    sizes = []
    for item in value:
        match = _SIZE.match(item) if isinstance(item, str) else None
        if match is None or min(int(match[1]), int(match[2])) < 16:
            raise bad("compile_sizes", f'must be a list of "WIDTHxHEIGHT" strings, each side >= 16 ({item!r} is not)')
        sizes.append((int(match[1]), int(match[2])))
    return tuple(dict.fromkeys(sizes))  # in order, once each


# -- applying ------------------------------------------------------------------------------


def check_speed_options(options: SpeedOptions, device: torch.device | str) -> None:
    """Refuse options this machine cannot run, before any is applied.

    Raises:
        EngineError(code="model_unavailable"): fp8 off CUDA or on a GPU older than compute
            capability 8.9; quantisation without torchao installed.
    """
    import torch

    device = torch.device(device)
    if options.quantize == "fp8":
        if device.type != "cuda":
            raise EngineError(f'option quantize = "fp8" needs a CUDA GPU of compute capability '
                              f'{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer; this worker runs on '
                              f'{device.type} (int8 runs anywhere)', code="model_unavailable")
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_MIN_CAPABILITY:
            raise EngineError(f'option quantize = "fp8" needs compute capability 8.9 or newer; '
                              f'{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}',
                              code="model_unavailable")
    if options.quantize is not None and not torchao_available():
        raise EngineError(f'option quantize = "{options.quantize}" needs torchao: pip install "darkroom[accel]"',
                          code="model_unavailable")


def apply_speed_options(pipe: Any, options: SpeedOptions, device: torch.device | str) -> None:
    """Apply ``options`` to a loaded pipeline in place (its transformer and VAE), once.

    Call after the pipeline is on ``device`` and before its first use. The order matters and is
    fixed here: fuse QKV (so that quantisation sees the fused weights), quantise, install the
    step cache, then compile (so that the compiled graphs include all of the above).

    Raises:
        EngineError(code="model_unavailable"): see ``check_speed_options``; or the pipeline's
            transformer does not support an option (the diffusers message is chained).
    """
    check_speed_options(options, device)
    transformer = pipe.transformer
    try:
        if options.fuse_qkv:
            fuse_qkv(transformer)
        if options.quantize is not None:
            quantize(transformer, options.quantize)
        if options.cache is not None:
            enable_first_block_cache(transformer, options.cache_threshold)
        if options.compile != "off":
            compile_transformer(transformer, options)
        if options.vae_channels_last and getattr(pipe, "vae", None) is not None:
            import torch

            pipe.vae.to(memory_format=torch.channels_last)
    except EngineError:
        raise
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise EngineError(f"{type(transformer).__name__} cannot take these speed options: {exc}",
                          code="model_unavailable") from exc


def fuse_qkv(transformer: Any) -> None:
    """Fuse each attention's q, k and v projections into one matmul (diffusers' public API).

    diffusers keeps the unfused projections beside the fused ones (so that it can unfuse);
    we never unfuse, and on FLUX.1 [dev] they are 2.2 B parameters (4.3 GB in bf16) that the
    fused path never reads (``_get_fused_projections`` in diffusers 0.42), so they are dropped.
    """
    from diffusers.models.attention import AttentionModuleMixin

    transformer.fuse_qkv_projections()
    for module in transformer.modules():
        if not (isinstance(module, AttentionModuleMixin) and getattr(module, "fused_projections", False)):
            continue
        for fused, originals in (("to_qkv", ("to_q", "to_k", "to_v")),
                                 ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            if getattr(module, fused, None) is not None:
                for name in originals:
                    if getattr(module, name, None) is not None:
                        delattr(module, name)


def quantize(transformer: Any, mode: str) -> None:
    """Quantise the linear layers of the transformer's repeated blocks with torchao, in place.

    Only the blocks (over 95% of FLUX's weights and FLOPs): the embedders and the output
    projection stay in the pipeline's dtype, where quantisation costs quality for little speed.
    fp8: dynamic per-row activation and weight scales (``torch._scaled_mm``); int8: weights only.
    """
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    inside = {id(m) for block in repeated_blocks(transformer) for m in block.modules()}

    def wanted(module: torch.nn.Module, fqn: str) -> bool:
        # fp8 matmuls need both sides' dimensions divisible by 16.
        return (isinstance(module, torch.nn.Linear) and id(module) in inside
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    config = (Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()) if mode == "fp8"
              else Int8WeightOnlyConfig())
    quantize_(transformer, config, filter_fn=wanted)


def repeated_blocks(transformer: Any) -> list[Any]:
    """The transformer's instances of its ``_repeated_blocks`` classes (diffusers' list for
    regional compilation), in module order.

    Raises:
        ValueError: the transformer declares none.
    """
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    blocks = [m for m in transformer.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} declares no repeated blocks")
    return blocks


def enable_first_block_cache(transformer: Any, threshold: float) -> None:
    """diffusers' First Block Cache on the transformer (``CacheMixin.enable_cache``).

    Raises:
        ValueError: the transformer's blocks do not fit the cache (``first_block_cache_unsupported``).
    """
    from diffusers import FirstBlockCacheConfig

    why = first_block_cache_unsupported(transformer)
    if why is not None:
        raise ValueError(why)
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def first_block_cache_unsupported(transformer: Any) -> str | None:
    """Why diffusers' First Block Cache cannot run this transformer, or None if it can.

    The cache adds the residual of the last block to the first block's output when it skips, so
    both must return the same streams. In diffusers 0.42 Flux2Transformer2DModel's first block
    returns (text, image) and its last block one joined tensor, and the cache fails at its
    second step with a TypeError; this finds such a mismatch before a request does. It reads
    diffusers' private block registry (``hooks._helpers``), the only record of what each block
    returns; if that moves, the check steps aside and ``enable_cache`` decides.
    """
    import torch

    try:
        from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
        from diffusers.hooks._helpers import TransformerBlockRegistry
    except ImportError:  # pragma: no cover - another diffusers layout
        return None
    blocks = [block for name, child in transformer.named_children()
              if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList)
              for block in child]
    name = type(transformer).__name__
    if len(blocks) < 2:
        return f"the first-block cache needs two or more transformer blocks; {name} has {len(blocks)}"
    try:
        head, tail = (TransformerBlockRegistry.get(type(b)) for b in (blocks[0], blocks[-1]))
    except ValueError:
        return f"diffusers' first-block cache does not know the blocks of {name}"
    if (head.return_encoder_hidden_states_index is None) != (tail.return_encoder_hidden_states_index is None):
        return (f"diffusers' first-block cache cannot run {name}: its first block ({type(blocks[0]).__name__}) "
                f"and last block ({type(blocks[-1]).__name__}) return different streams")
    return None


def reset_step_cache(pipe: Any) -> None:
    """Forget the step cache's saved residuals. A pipeline call resets them when it ends
    normally; after a failed call the next one must not start from the failed call's state."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and getattr(transformer, "is_cache_enabled", False):
        transformer._reset_stateful_cache()  # diffusers' own reset (maybe_free_model_hooks calls it)


def compile_transformer(transformer: Any, options: SpeedOptions) -> None:
    """``torch.compile`` the transformer in place: its repeated blocks (regional) or whole (full).

    fullgraph=True unless the step cache is on: the cache decides per step, in Python, whether
    to run the remaining blocks, a graph break by design.
    """
    kwargs = dict(fullgraph=options.cache is None, dynamic=options.dynamic, backend=options.compile_backend)
    if options.compile == "regional":
        transformer.compile_repeated_blocks(**kwargs)
    else:
        transformer.compile(**kwargs)


# -- warm-up -------------------------------------------------------------------------------


def warm_up(pipe: Any, options: SpeedOptions, sizes: Iterable[tuple[int, int]] | None = None,
            **call_kwargs: Any) -> dict[tuple[int, int], float]:
    """Run the pipeline once per size (two steps, latents out) so that ``torch.compile`` compiles
    now rather than in the first request of that size.

    Args:
        pipe: a pipeline ``apply_speed_options`` was applied to.
        options: its speed options; without compilation this does nothing.
        sizes: (width, height) pairs; default ``options.compile_sizes``.
        call_kwargs: more arguments of the pipeline call (``max_sequence_length``, say), so
            that the warm-up's shapes are the requests' shapes.

    Returns:
        Seconds per size, in order.

    Raises:
        EngineError(code="model_unavailable"): the pipeline failed at a size (a compiler error,
            say, which ``torch.compile`` raises at the first call, not when it is set up).
    """
    import torch

    if options.compile == "off":
        return {}
    timings: dict[tuple[int, int], float] = {}
    device = getattr(pipe, "_execution_device", None) or pipe.device
    for width, height in sizes if sizes is not None else options.compile_sizes:
        started = time.perf_counter()
        try:
            # Two steps: the step cache's second step takes the branch the first never does.
            pipe(prompt="warm-up", width=width, height=height, num_inference_steps=2, output_type="latent",
                 generator=torch.Generator(device).manual_seed(0), **call_kwargs)
        except Exception as exc:
            reset_step_cache(pipe)
            raise EngineError(f"warm-up at {width}x{height} failed: {type(exc).__name__}: {exc}",
                              code="model_unavailable") from exc
        timings[width, height] = time.perf_counter() - started
        logger.info("warm-up at %dx%d: %.1f s", width, height, timings[width, height])
    return timings


def torchao_available() -> bool:
    """Whether torchao can be imported (the ``accel`` extra)."""
    import importlib.util

    return importlib.util.find_spec("torchao") is not None
