"""Average the transformers of pipelines trained from the same weights (a "model soup").

    python -m training.average training/runs/mini-d14a/model training/runs/mini-d14b/model \
        --out models/darkroom-mini

Why: two continuations of one model that differ only in their data mix (run 14, 2026-12-03: `--edit-frac` 0.3 and
0.5) sit in one basin of the loss, so their mean is a model too, and it scored above both on held-out prompts
(training/EXPERIMENTS.md, run 14). It costs no training and no inference time. Averaging only makes sense for
weights with a common starting point; models trained apart from scratch need not share a basin, and their
mean is usually noise, so this refuses pipelines whose architectures or VAEs differ.

The weights are read from the saved fp16 pipelines, averaged in float32 and saved as fp16 again; everything
but the transformer (VAE, scheduler, tokenizers) is the first pipeline's, and ``darkroom_mini.json`` records
the sources.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

TRANSFORMER_FILE = "transformer/diffusion_pytorch_model.safetensors"
VAE_FILE = "vae/diffusion_pytorch_model.safetensors"


class AverageError(ValueError):
    """The pipelines cannot be averaged (different architectures or VAEs)."""


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean in float32, returned in each tensor's original dtype (the callers have checked that
    the architectures, hence the keys and shapes, agree)."""
    return {k: (sum(s[k].float() for s in states) / len(states)).to(v.dtype) for k, v in states[0].items()}


def _architecture(pipeline: Path) -> dict:
    """The transformer's config without diffusers' bookkeeping keys (``_class_name``, ``_diffusers_version``)."""
    config = json.loads((pipeline / "transformer" / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def average_pipelines(sources: list[str | Path], out: str | Path) -> Path:
    from safetensors.torch import load_file, save_file

    sources = [Path(s) for s in sources]
    if len(sources) < 2:
        raise AverageError("give at least two pipelines")
    out = Path(out)
    if any(out.resolve() == s.resolve() for s in sources):
        raise AverageError("--out must not be one of the sources")
    configs = [_architecture(s) for s in sources]
    if any(c != configs[0] for c in configs[1:]):
        raise AverageError("the transformers' configs differ")
    vaes = [load_file(s / VAE_FILE) for s in sources]
    if any(v.keys() != vaes[0].keys() or any(not torch.equal(v[k], vaes[0][k]) for k in v) for v in vaes[1:]):
        raise AverageError("the VAEs differ: average only continuations that share one decoder")
    mean = average_state_dicts([load_file(s / TRANSFORMER_FILE) for s in sources])
    staging = out.with_name(out.name + ".averaging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(sources[0], staging)
    save_file({k: v.contiguous() for k, v in mean.items()}, staging / TRANSFORMER_FILE, metadata={"format": "pt"})
    metas = [json.loads(p.read_text()) if (p := s / "darkroom_mini.json").exists() else {} for s in sources]
    meta = dict(metas[0])
    meta["averaged_from"] = [{"path": str(s), **{k: m[k] for k in ("train_step", "train_minutes", "seed") if k in m}}
                             for s, m in zip(sources, metas)]
    (staging / "darkroom_mini.json").write_text(json.dumps(meta, indent=2))
    if out.exists():  # replace the folder only once the new one is complete
        shutil.rmtree(out)
    staging.rename(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="saved pipeline folders (two or more)")
    ap.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    args = ap.parse_args(argv)
    try:
        print("averaged", len(args.sources), "pipelines ->", average_pipelines(args.sources, args.out))
    except AverageError as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()
