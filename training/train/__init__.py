"""Train darkroom-mini: one stage, from scratch or continuing another model's weights.

    python -m training.train --out models/darkroom-mini --seed 0 [--hours 1.95] [--resume]
    python -m training.train --init-from <pipeline> --lr 3e-4 --max-steps 3500 ...   # a continuation
    python -m training.train --smoke --out /tmp/mini-smoke        # CI: tiny, < 1 min

One command trains one stage; the shipped weights came from a chain of them, which
``python -m training.recipe`` replays (training/EXPERIMENTS.md has the history).

A stage (all in this one process, resumable with --resume):
  1. FluxTransformer2DModel with rectified flow (x_t = (1-s) x0 + s n,
     target n - x0, timestep=s as FluxPipeline passes t/1000), mixed
     text-to-image and Kontext edit samples (context latents appended with
     image ids whose first coordinate is 1, exactly as FluxKontextPipeline).
     Training data is generated on the fly into a rolling pool (render ->
     analytic VAE latents -> one MiniLM pass giving exactly what
     FluxPipeline.encode_prompt gives).
  2. The VAE decoder (its encoder is analytic, see analytic_vae.py), unless
     --decoder-from names one trained separately (--decoder-only), or the
     stage continues a model that has one (--init-from).
Checkpoints: <run>/ckpt.pt every --ckpt-min minutes; pipeline exports in
<run>/export (EMA weights); final export into --out.

The package, by concept; every name below is importable from ``training.train`` itself:
  data       rendering chunks (here or in worker processes) and the rolling pool
  objective  the rectified-flow loss, detail weights, the training-only semantic head
  decoder    the VAE decoder stage
  loop       the training loop: models, schedule, EMA, checkpoints, exports
  cli        the command line (``main``)
"""
from __future__ import annotations

from training.train.common import log, to_tensor  # noqa: F401
from training.train.data import Pool, _caption_fits, _Ring, _tokenizer, _worker_init, render_chunk  # noqa: F401
from training.train.decoder import decoder_stage, latent_stats, soften_latents, train_decoder  # noqa: F401
from training.train.objective import AuxHead, detail_weights, flow_loss  # noqa: F401
from training.train.loop import init_from_pipeline, train_stage  # noqa: F401
from training.train.cli import main, parse_edit_mix, parser  # noqa: F401
