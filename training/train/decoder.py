"""The VAE decoder stage: its encoder is analytic (``training/analytic_vae.py``), so the latent space
never changes and the decoder can be trained before, after or beside the transformer."""
from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training import world
from training.analytic_vae import analytic_latents, decoder_parameters
from training.train.common import log, to_tensor


def latent_stats(rng: random.Random, n: int = 96):
    xs = []
    for i in range(n):
        asp = list(world.ASPECTS)[i % len(world.ASPECTS)]
        xs.append(analytic_latents(to_tensor(world.render(world.sample_t2i(rng, "any", aspect=asp)[2]))[None]).flatten())
    z = torch.cat(xs)
    return z.mean().item(), 1.0 / z.std().item()


def soften_latents(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian-blur each latent of ``z`` (B,12,h,w) by its own ``sigma`` (B,), in the 4x-pooled RGB
    image the latent stores (``analytic_latents``), where shapes live; sigma 0 leaves a latent as is."""
    p = F.pixel_shuffle(z, 2)  # (B,3,2h,2w)
    r = 2
    x = torch.arange(-r, r + 1, dtype=z.dtype, device=z.device)
    sigma = torch.as_tensor(sigma, dtype=z.dtype, device=z.device).clamp(min=1e-3)
    k = torch.exp(-x[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (B,5); sigma ~0 -> a delta
    b, c, hh, ww = p.shape
    # a separable per-sample blur as one grouped conv over the batch folded into the channels
    q = p.reshape(1, b * c, hh, ww)
    kx = k.repeat_interleave(c, 0)  # (B*C,5)
    q = F.conv2d(F.pad(q, (r, r, 0, 0), mode="replicate"), kx[:, None, None, :], groups=b * c)
    q = F.conv2d(F.pad(q, (0, 0, r, r), mode="replicate"), kx[:, None, :, None], groups=b * c)
    return F.pixel_unshuffle(q.reshape(b, c, hh, ww), 2)


def train_decoder(vae, minutes: float, rng: random.Random, batch: int = 4, lr: float = 3e-4, log_every: int = 25,
                  max_steps: int | None = None, noise: float = 0.04, blur: float = 0.0, save_to: Path | None = None,
                  save_every_min: float = 5.0):
    """Train only the VAE decoder (+post_quant_conv) on analytic latents -> image.

    The encoder is fixed (analytic), so the latent space the transformer sees never
    changes: this stage can run before, after or in parallel with transformer training.
    Latents get small Gaussian noise so the decoder also cleans up imperfect
    generated latents. With ``blur`` > 0, each latent is also softened by a Gaussian of sigma
    uniform in [0, blur] pooled pixels (``soften_latents``) while the target stays the crisp render.
    Why it was tried: a decoder trained on crisp latents draws a softened true latent of small stars
    as round blobs (noise up to 0.15 it handles), as it draws sampled ones. Why it is off by default:
    at equal decoder compute it scored worse on the evaluator (held-out 0.64 against 0.71 on
    run 11's transformer, 2026-12-02; training/EXPERIMENTS.md, "Tried and not adopted")."""
    params = decoder_parameters(vae)
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    aspects = list(world.ASPECTS)
    t0 = time.time()
    last_save = time.time()
    step = 0
    budget = minutes * 60
    while True:
        frac = (time.time() - t0) / budget if budget > 0 else 1.0
        if (max_steps is not None and step >= max_steps) or (max_steps is None and frac >= 1.0):
            break
        asp = rng.choice(aspects)
        imgs = []
        for _ in range(batch):
            if rng.random() < 0.3:
                _, src, tgt, _ = world.sample_edit(rng, aspect=asp)
                sc = rng.choice([src, tgt])
            else:
                sc = world.sample_t2i(rng, "any", aspect=asp)[2]
            imgs.append(to_tensor(world.render(sc)))
        x = torch.stack(imgs)
        z = analytic_latents(x)
        if blur > 0:
            z = soften_latents(z, torch.tensor([rng.uniform(0.0, blur) for _ in range(z.shape[0])]))
        if noise > 0:
            sig = torch.rand(z.shape[0], 1, 1, 1) * noise
            z = z + sig * torch.randn_like(z)
        y = vae.decode(z).sample
        loss = (y - x).abs().mean() + 2.0 * F.mse_loss(y, x)
        cur = lr * min(1.0, (step + 1) / 50) * (0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % log_every == 0:
            psnr = -10 * math.log10(F.mse_loss(y.detach().clamp(-1, 1), x).item() / 4 + 1e-12)
            log(f"decoder step {step} loss {loss.item():.4f} psnr {psnr:.2f} lr {cur:.2e} "
                f"({(step + 1) * batch / (time.time() - t0):.1f} img/s)")
        step += 1
        if save_to is not None and time.time() - last_save > save_every_min * 60:
            torch.save(vae.state_dict(), str(save_to) + ".tmp"); os.replace(str(save_to) + ".tmp", save_to)
            last_save = time.time()
            log(f"decoder saved -> {save_to}")
    vae.eval().requires_grad_(False)
    if save_to is not None:
        torch.save(vae.state_dict(), str(save_to) + ".tmp"); os.replace(str(save_to) + ".tmp", save_to)
    return vae


def decoder_stage(vae, args: argparse.Namespace, save_to: Path | None = None):
    """The decoder stage as the command line sets it up: one place for --decoder-only and the end of a full
    run, so a decoder trained in parallel is trained the way the one-command run would train it."""
    return train_decoder(vae, args.dec_minutes, random.Random(args.seed + 17), batch=2 if args.smoke else 4,
                         max_steps=2 if args.smoke else None, blur=args.dec_blur, save_to=save_to)
