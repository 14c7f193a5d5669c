"""Time FLUX's denoising loop on a GPU: eager bf16 against each speed option and all together.

    python -m bench.gpu_flux                      # FLUX.1 [dev]'s transformer, 1024x1024, 28 steps (CUDA)
    python -m bench.gpu_flux --family flux2       # FLUX.2 [dev]'s (32 B parameters)
    python -m bench.gpu_flux --dry-run --out DIR  # CPU, a tiny config, 2 steps: every code path, in seconds

The transformer is built with random weights in bf16 directly on the GPU: the real architecture
and sizes, so the same FLOPs and memory traffic as the released weights, with no download.
Random weights make images meaningless, so quality is checked where it is decided: the
transformer's output at each step of the same loop (same start noise, same schedule) against
eager bf16, as cosine similarity (target >= 0.99; bench/results keep the per-step values).

What is timed: the 28 transformer calls and Euler steps of one 1024x1024 image (4096 image
tokens, 512 text tokens, batch 1), after a warm-up; not the text encoders (about 2% of an image)
nor the VAE decode (about 3%). The variants (darkroom.engines.accel applies each, as the worker
does; each on a freshly built transformer with the same weights):

    eager        bf16, no option
    compile+fp8  compile = "regional" and quantize = "fp8": the production anchor below
    all          every option this machine can run
    compile      compile = "regional" (torch.compile of the repeated blocks, static shapes)
    fp8          quantize = "fp8" (torchao, dynamic per-row scales; int8 off CUDA)
    cache        cache = "first-block" (diffusers' First Block Cache, threshold 0.05)
    fuse_qkv     fuse_qkv = true

Each variant's figure is seconds per image, its speed-up against eager in the same run, and
MFU: the FLOPs of an eager image (counted by torch.utils.flop_counter over one transformer call)
over its time and over a bf16 matrix-product peak measured first (8192^3, the best of 10). A
variant that skips work (the cache) can exceed what it computes: its MFU is "eager-equivalent".

Published anchors, 1024x1024, 28 steps, one H100: diffusers eager 6.7 s, compiled 4.3 s; a
production service 3.0 s end to end with fp8 + compile. Target: <= 2.0 s with every option on.

Results go to bench/results/gpu_flux[-flux2].json (``--out`` for another folder), rewritten
after each variant so that a run stopped by a time limit keeps what it measured; ``--budget-s``
starts no variant after that many seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MIN_COSINE = 0.99
ANCHORS_H100_S = {"diffusers eager": 6.7, "diffusers compiled": 4.3, "production fp8 + compile": 3.0, "target": 2.0}

#: The transformers' real configurations (diffusers' defaults for Flux2Transformer2DModel are FLUX.2 [dev]'s).
FAMILIES: dict[str, dict[str, Any]] = {
    "flux": {
        "name": "FLUX.1 [dev]", "class": "FluxTransformer2DModel", "latent_scale": 16, "text_tokens": 512,
        "config": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                       num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                       guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        "tiny": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                     axes_dims_rope=(4, 6, 6)),
    },
    "flux2": {
        "name": "FLUX.2 [dev]", "class": "Flux2Transformer2DModel", "latent_scale": 16, "text_tokens": 512,
        "config": dict(patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
                       num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256,
                       mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=True),
        "tiny": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32, mlp_ratio=3.0,
                     axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True),
    },
}

VARIANTS: dict[str, dict[str, Any]] = {
    "eager": {},
    "compile+fp8": {"compile": "regional", "quantize": "fp8"},
    "all": {"compile": "regional", "quantize": "fp8", "cache": "first-block", "fuse_qkv": True},
    "compile": {"compile": "regional"},
    "fp8": {"quantize": "fp8"},
    "cache": {"cache": "first-block"},
    "fuse_qkv": {"fuse_qkv": True},
}


def log(message: str) -> None:
    """Progress, on stderr (stdout is the table)."""
    print(f"[gpu_flux {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Setup:
    """What one run measures with."""

    family: str
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    width: int
    height: int
    steps: int
    text_tokens: int
    repeats: int
    dry_run: bool
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def image_tokens(self) -> int:
        scale = FAMILIES[self.family]["latent_scale"]
        return (self.height // scale) * (self.width // scale)


# -- the machine's ceiling -----------------------------------------------------------------------


def matmul_peak(setup: Setup) -> dict[str, Any]:
    """The best rate of a large square matrix product in the run's dtype (bf16 on CUDA), FLOP/s."""
    import torch

    n = 512 if setup.dry_run else 8192
    a = torch.randn(n, n, device=setup.device, dtype=setup.dtype)
    b = torch.randn(n, n, device=setup.device, dtype=setup.dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        started = clock(setup)
        a @ b
        times.append(elapsed(setup, started))
    best = min(times)
    return {"n": n, "dtype": str(setup.dtype).removeprefix("torch."), "flops": 2 * n**3 / best,
            "tflops": round(2 * n**3 / best / 1e12, 1), "seconds_best": best}


def clock(setup: Setup) -> float:
    if setup.device.type == "cuda":
        import torch

        torch.cuda.synchronize(setup.device)
    return time.perf_counter()


def elapsed(setup: Setup, started: float) -> float:
    return clock(setup) - started


# -- the model and its loop ----------------------------------------------------------------------


def build(setup: Setup) -> Any:
    """The family's transformer with random weights, made directly in the run's dtype on its
    device (no fp32 copy, no host round trip); the same seed gives the same weights."""
    import diffusers
    import torch

    cls = getattr(diffusers, FAMILIES[setup.family]["class"])
    torch.manual_seed(setup.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(setup.dtype)
    try:
        with torch.device(setup.device):
            model = cls(**setup.config)
    finally:
        torch.set_default_dtype(default)
    return model.eval().requires_grad_(False)


def make_inputs(setup: Setup) -> dict[str, Any]:
    """Start noise, text embeddings and positions for one image, from the run's seed."""
    import torch

    g = torch.Generator(setup.device).manual_seed(setup.seed + 1)
    cfg, scale = setup.config, FAMILIES[setup.family]["latent_scale"]
    rows, cols = setup.height // scale, setup.width // scale
    positions = 4 if setup.family == "flux2" else 3
    img_ids = torch.zeros(rows, cols, positions, device=setup.device)
    img_ids[..., 1] = torch.arange(rows, device=setup.device)[:, None]
    img_ids[..., 2] = torch.arange(cols, device=setup.device)[None, :]
    txt_ids = torch.zeros(setup.text_tokens, positions, device=setup.device)
    if setup.family == "flux2":
        txt_ids[:, 3] = torch.arange(setup.text_tokens, device=setup.device)

    def noise(*shape: int) -> Any:
        return torch.randn(*shape, generator=g, device=setup.device, dtype=torch.float32).to(setup.dtype)

    inputs = dict(latents=noise(1, rows * cols, cfg["in_channels"]),
                  encoder_hidden_states=noise(1, setup.text_tokens, cfg["joint_attention_dim"]),
                  img_ids=img_ids.reshape(-1, positions), txt_ids=txt_ids,
                  guidance=torch.full((1,), 3.5, device=setup.device, dtype=torch.float32))
    if setup.family == "flux":
        inputs["pooled_projections"] = noise(1, cfg["pooled_projection_dim"])
    return inputs


def denoise(model: Any, inputs: dict[str, Any], steps: int, record: list[Any] | None = None) -> Any:
    """FLUX's loop without its pipeline: ``steps`` transformer calls and Euler steps from ``inputs``'
    noise along a linear flow-matching schedule; ``record`` gets each step's output (float32)."""
    import torch

    latents = inputs["latents"]
    sigmas = torch.linspace(1.0, 1.0 / steps, steps).tolist() + [0.0]
    extra = {k: v for k, v in inputs.items() if k != "latents"}
    with torch.inference_mode():
        for i in range(steps):
            timestep = torch.full((1,), sigmas[i], device=latents.device, dtype=latents.dtype)
            with model.cache_context("cond"):  # the step cache keys its state by this, as pipelines do
                out = model(hidden_states=latents, timestep=timestep, return_dict=False, **extra)[0]
            if record is not None:
                record.append(out.float())
            latents = (latents.float() + (sigmas[i + 1] - sigmas[i]) * out.float()).to(latents.dtype)
    return latents


def count_flops(model: Any, inputs: dict[str, Any]) -> int:
    """FLOPs of one transformer call, counted by torch's FLOP counter (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        denoise(model, inputs, 1)
    return counter.get_total_flops()


# -- one variant ---------------------------------------------------------------------------------


def variant_options(name: str, setup: Setup, available: dict[str, str | None]) -> tuple[dict[str, Any], list[str]]:
    """The registry options of a variant on this machine, and what was left out (and why)."""
    raw = dict(VARIANTS[name])
    left_out = []
    if raw.get("quantize") == "fp8" and available["fp8"] is not None:
        if available["int8"] is None:
            raw["quantize"] = "int8"  # the quantisation path still runs, as int8
            left_out.append(f"fp8 ran as int8: {available['fp8']}")
        else:
            raw.pop("quantize")
            left_out.append(f"fp8: {available['fp8']}; int8: {available['int8']}")
    if raw.get("compile"):
        # One size: static shapes (the fastest kernels); aot_eager off CUDA (inductor's CPU code
        # generation takes minutes on a small machine, and its speed there is not the question).
        raw["compile_sizes"] = [f"{setup.width}x{setup.height}"]
        if setup.device.type != "cuda":
            raw["compile_backend"] = "aot_eager"
    return raw, left_out


def availability(setup: Setup) -> dict[str, str | None]:
    """None where a quantisation runs here, else why not."""
    from darkroom.engines.accel import SpeedOptions, check_speed_options
    from darkroom.errors import EngineError

    out: dict[str, str | None] = {}
    for mode in ("fp8", "int8"):
        try:
            check_speed_options(SpeedOptions(quantize=mode), setup.device)
            out[mode] = None
        except EngineError as exc:
            out[mode] = exc.message
    return out


def run_variant(name: str, setup: Setup, inputs: dict[str, Any], available: dict[str, str | None],
                reference: list[Any] | None) -> dict[str, Any]:
    """Build, apply the variant's options, warm up, time ``setup.repeats`` images; the figures."""
    import torch

    from darkroom.engines.accel import (
        DEFAULT_CACHE_THRESHOLD,
        apply_speed_options,
        first_block_cache_unsupported,
        parse_speed_options,
        reset_step_cache,
    )

    raw, left_out = variant_options(name, setup, available)
    if name != "eager" and not raw:
        return {"skipped": "; ".join(left_out)}
    options = parse_speed_options(f"bench-{name}", raw)
    result: dict[str, Any] = {"options": raw, "left_out": left_out}
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    started = clock(setup)
    model = build(setup)
    result["build_s"] = round(elapsed(setup, started), 2)
    if options.cache is not None and (why := first_block_cache_unsupported(model)) is not None:
        options = replace(options, cache=None, cache_threshold=DEFAULT_CACHE_THRESHOLD)
        raw.pop("cache")
        left_out.append(f"cache: {why}")
        if name == "cache":
            del model
            release(setup)
            return {"skipped": why}
    holder = SimpleNamespace(transformer=model, vae=None)
    started = clock(setup)
    apply_speed_options(holder, options, setup.device)
    result["apply_s"] = round(elapsed(setup, started), 2)

    # Warm-up: compiles (at the one size) and takes the step cache through both its branches.
    started = clock(setup)
    reset_step_cache(holder)
    denoise(model, inputs, 2)
    result["warm_up_s"] = round(elapsed(setup, started), 2)

    times, outputs = [], []
    for _ in range(setup.repeats):
        outputs = []
        reset_step_cache(holder)
        started = clock(setup)
        denoise(model, inputs, setup.steps, outputs)
        times.append(elapsed(setup, started))
    result["seconds"] = [round(t, 4) for t in times]
    result["seconds_per_image"] = round(min(times), 4)
    if setup.device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(setup.device) / 2**30, 2)
    if reference is not None:
        cos = [torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
               for a, b in zip(reference, outputs)]
        result["cosine_per_step"] = [round(c, 5) for c in cos]
        result["cosine_min"] = round(min(cos), 5)
        result["meets_quality"] = min(cos) >= MIN_COSINE
    result["_outputs"] = outputs
    if name == "eager":
        result["_parameters"] = sum(p.numel() for p in model.parameters())
        result["_flops_per_step"] = count_flops(model, inputs)
    del model, holder
    release(setup)
    return result


def release(setup: Setup) -> None:
    """Free the variant's model and compiled graphs before the next one is built."""
    import torch

    torch._dynamo.reset()  # compiled graphs and their guards refer to the old modules
    gc.collect()
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()


# -- the run -------------------------------------------------------------------------------------


def machine(setup: Setup) -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "diffusers": diffusers.__version__, "cpu_count": os.cpu_count(),
                            "device": str(setup.device)}
    try:
        import torchao

        info["torchao"] = torchao.__version__
    except ImportError:
        info["torchao"] = None
    if setup.device.type == "cuda":
        props = torch.cuda.get_device_properties(setup.device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


def results_path(args: argparse.Namespace) -> Path:
    name = "gpu_flux" + ("" if args.family == "flux" else f"-{args.family}") + ("-dry-run" if args.dry_run else "")
    return Path(args.out or RESULTS) / f"{name}.json"


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def table(report: dict[str, Any]) -> str:
    rows = [(f"{report['model']} transformer, {report['width']}x{report['height']}, {report['steps']} steps, "
             f"{report['device']['device']} ({report['device'].get('gpu', 'no GPU')}); matmul peak "
             f"{report['matmul_peak']['tflops']} TFLOP/s ({report['matmul_peak']['dtype']})"),
            f"{'variant':<12} {'s/image':>8} {'speed-up':>9} {'MFU':>6} {'min cos':>8}  notes"]
    for name, r in report["variants"].items():
        if "seconds_per_image" not in r:
            rows.append(f"{name:<12} {'-':>8} {'-':>9} {'-':>6} {'-':>8}  {r.get('skipped') or r.get('error')}")
            continue
        cos = r.get("cosine_min")
        notes = "; ".join(r.get("left_out", []))
        rows.append(f"{name:<12} {r['seconds_per_image']:>8.3f} {r.get('speedup', 1.0):>8.2f}x "
                    f"{r['mfu']:>6.1%} {'' if cos is None else f'{cos:.4f}':>8}  {notes}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_flux", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="flux")
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny config, 2 steps: checks the script")
    parser.add_argument("--out", type=Path, help="folder for the JSON (default bench/results)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 28; 2 with --dry-run)")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default 1024x1024; 64x64 with --dry-run)")
    parser.add_argument("--repeats", type=int, default=2, help="timed images per variant, the best counts")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--budget-s", type=float, help="start no variant after this many seconds")
    args = parser.parse_args(argv)

    import torch

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if "eager" not in names:
        names.insert(0, "eager")  # every ratio is against it
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --dry-run)")
    family = FAMILIES[args.family]
    width, height = map(int, (args.size or ("64x64" if args.dry_run else "1024x1024")).lower().split("x"))
    device = torch.device("cpu" if args.dry_run else "cuda")
    setup = Setup(family=args.family, device=device, dtype=torch.float32 if args.dry_run else torch.bfloat16,
                  width=width, height=height, steps=args.steps or (2 if args.dry_run else 28),
                  text_tokens=8 if args.dry_run else family["text_tokens"], repeats=args.repeats,
                  dry_run=args.dry_run, config=family["tiny" if args.dry_run else "config"])
    if args.dry_run:
        torch.set_num_threads(1)  # a tiny model on a small shared machine: threads only contend
    run_started = time.monotonic()
    path = results_path(args)
    report: dict[str, Any] = {
        "bench": "gpu_flux", "family": args.family, "model": family["name"], "dry_run": args.dry_run,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "width": width, "height": height, "steps": setup.steps, "repeats": setup.repeats,
        "tokens": {"image": setup.image_tokens, "text": setup.text_tokens}, "config": setup.config,
        "min_cosine": MIN_COSINE, "anchors_h100_s": ANCHORS_H100_S, "device": machine(setup), "variants": {},
    }
    log(f"{family['name']} at {width}x{height}, {setup.steps} steps, on {device}; results to {path}")
    report["matmul_peak"] = matmul_peak(setup)
    log(f"matmul peak {report['matmul_peak']['tflops']} TFLOP/s")
    inputs = make_inputs(setup)
    available = availability(setup)
    report["quantize_available"] = available

    reference = None
    for name in names:
        if args.budget_s is not None and time.monotonic() - run_started > args.budget_s:
            report["variants"][name] = {"skipped": f"over --budget-s {args.budget_s:g}"}
            write(path, report)
            continue
        log(f"{name}: building and timing")
        try:
            result = run_variant(name, setup, inputs, available, reference)
        except Exception as exc:  # one variant failing (a compiler error, say) must not lose the others
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            result = {"error": f"{type(exc).__name__}: {exc}"}
            release(setup)
        if name == "eager" and "_outputs" in result:
            reference = result["_outputs"]
            report["parameters"] = result["_parameters"]
            report["flops_per_step"] = result["_flops_per_step"]
            report["flops_per_image"] = report["flops_per_step"] * setup.steps
            log(f"{report['parameters'] / 1e9:.2f} B parameters, "
                f"{report['flops_per_image'] / 1e15:.4f} PFLOP per image")
        for private in [f for f in result if f.startswith("_")]:
            del result[private]
        if "seconds_per_image" in result and "flops_per_image" in report:
            result["mfu"] = round(report["flops_per_image"] / result["seconds_per_image"]
                                  / report["matmul_peak"]["flops"], 4)
            eager = report["variants"].get("eager", result)
            if "seconds_per_image" in eager:
                result["speedup"] = round(eager["seconds_per_image"] / result["seconds_per_image"], 3)
            log(f"{name}: {result['seconds_per_image']:.3f} s/image, {result.get('speedup', 1):.2f}x, "
                f"min cosine {result.get('cosine_min', '-')}")
        report["variants"][name] = result
        write(path, report)
    report["seconds"] = round(time.monotonic() - run_started, 1)
    write(path, report)
    print(table(report))
    print(f"wrote {path}")
    return 0 if "seconds_per_image" in report["variants"].get("eager", {}) else 1


if __name__ == "__main__":
    sys.exit(main())
