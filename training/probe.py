"""Denoising probe: how well a darkroom-mini checkpoint recovers clean latents, by noise level.

    python -m training.probe --model training/runs/<run>/export [--n 64] [--json out.json]

A few seconds on a CPU, where the full evaluator (training.evaluate) takes minutes and reads
zero on every early checkpoint: for held-out prompts it noises the true latents to fixed levels
s, asks the transformer for the velocity and reports the x0 error overall and on shape pixels
(outlines, dilated; see train.detail_weights) separately. Shape-pixel error is what keeps samples
blobs (colours and layout are learnt first), so A/B runs of training recipes compare on it.
"""
from __future__ import annotations

import argparse
import json
import random

import torch
from diffusers import FluxPipeline as P

from training import build_pipeline as bp
from training import world
from training.analytic_vae import analytic_latents
from training.train import Pool, detail_weights, to_tensor

LEVELS = (0.1, 0.3, 0.5, 0.7)


@torch.no_grad()
def probe(model: str, n: int = 64, seed: int = 0, aspect: str = "1:1") -> dict:
    pipe = bp.load_pipeline(model)
    tr, vae = pipe.transformer.eval(), pipe.vae
    pool = Pool(pipe, bp.MAX_SEQ, cap=1)
    rng = random.Random(seed)
    caps, imgs = [], []
    while len(caps) < n:
        cap, _, sc = world.sample_t2i(rng, "heldout", aspect=aspect)
        caps.append(cap)
        imgs.append(to_tensor(world.render(sc)))
    pe, pooled = (t.float() for t in pool.encode_text(caps))
    z = (analytic_latents(torch.stack(imgs)) - vae.config.shift_factor) * vae.config.scaling_factor
    B, C, h, w = z.shape
    x0 = P._pack_latents(z, B, C, h, w)
    ids = P._prepare_latent_image_ids(B, h // 2, w // 2, z.device, z.dtype)
    # shape pixels: where detail_weights puts extra weight (edges, dilated); background elsewhere
    shape_mask = P._pack_latents((detail_weights(z, None, 1.0) > 1.0).float().expand(B, C, h, w), B, C, h, w)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for s in LEVELS:
        xt = (1 - s) * x0 + s * noise
        v = tr(hidden_states=xt, timestep=torch.full((B,), s), guidance=None, pooled_projections=pooled,
               encoder_hidden_states=pe, txt_ids=torch.zeros(pe.shape[1], 3), img_ids=ids, return_dict=False)[0]
        err = (xt - s * v - x0) ** 2
        out[f"s{s}"] = {"x0_mse": round(err.mean().item(), 5),
                        "x0_mse_shape": round((err * shape_mask).sum().item() / shape_mask.sum().item(), 5)}
    out["shape_mean"] = round(sum(v["x0_mse_shape"] for v in out.values()) / len(LEVELS), 5)
    out["model"] = model
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = probe(args.model, args.n)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
