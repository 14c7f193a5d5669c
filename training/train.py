"""Train darkroom-mini from scratch (one seeded command).

    python -m training.train --out models/darkroom-mini --seed 0 [--hours 1.95] [--resume]
    python -m training.train --smoke --out /tmp/mini-smoke        # CI: tiny, < 1 min

Stages (all in this one process, resumable):
  1. FluxTransformer2DModel with rectified flow (x_t = (1-s) x0 + s n,
     target n - x0, timestep=s as FluxPipeline passes t/1000), mixed
     text-to-image and Kontext edit samples (context latents appended with
     image ids whose first coordinate is 1, exactly as FluxKontextPipeline).
     Training data is generated on the fly into a rolling pool (render ->
     analytic VAE latents -> one MiniLM pass giving exactly what
     FluxPipeline.encode_prompt gives).
  2. The VAE decoder (its encoder is analytic, see analytic_vae.py), unless
     --decoder-from names one trained separately (--decoder-only).
Checkpoints: <run>/ckpt.pt every --ckpt-min minutes; pipeline exports in
<run>/export (EMA weights); final export into --out.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import random
import sys
import time
from pathlib import Path

# OpenMP's wait policy is left to the environment: on an otherwise idle CPU the default
# (spin, then sleep) was ~20% faster than PASSIVE (727 vs 919 ms per batch of 32, width 192);
# when other processes share the cores, OMP_WAIT_POLICY=PASSIVE avoids a 4-5x slowdown.

import numpy as np
import torch
import torch.nn.functional as F

from training import world
from training import build_pipeline as bp
from training.analytic_vae import analytic_latents, decoder_parameters
from diffusers import FluxPipeline


def log(msg: str):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def to_tensor(img) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return a


# ---------------------------------------------------------------------------
# VAE (analytic encoder, trained decoder)
# ---------------------------------------------------------------------------
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
    at equal decoder compute it scored worse on the evaluator (held-out 0.64 against 0.71, session 11;
    docs/darkroom-mini.md, "What session 11 taught")."""
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


# ---------------------------------------------------------------------------
# Data pool
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tokenizer(max_len: int):
    return bp.make_tokenizer(max_len)  # one per (worker) process and length


def _caption_fits(text: str, max_len: int) -> bool:
    return len(_tokenizer(max_len)(text).input_ids) <= max_len


def render_chunk(job: tuple) -> tuple:
    """Render one chunk of training samples: (seed, kind, aspect, k, max_len, coupled, layout, rich_p,
    edit_mix, add_rule, gradient, blocked) -> (kind,
    aspect, captions, target latents, context latents, label classes, label offsets, noise), latents
    unscaled (``analytic_latents``, a per-pixel average, so the same bits in any process). With
    ``coupled`` each text-to-image sample comes with its own fp16 noise (12, H/8, W/8) and its layout
    is read from that noise (``world.coupled_place``); otherwise noise is None and the training step
    draws it. A top-level function so that --data-workers processes can run it; the chunk's own seed
    makes the data independent of the worker count, and shipping latents instead of images keeps
    the main process (which feeds the GPU) free of per-pixel work."""
    seed, kind, asp, k, max_len, coupled, layout, rich_p, edit_mix, add_rule, gradient, blocked = job
    # caption wording: core words only, or also world.EXTRA_WORDS with probability rich_p ('train' for 0:
    # 'rich' draws one more random number per word, which would change runs 1-6's data stream)
    mode = "rich" if rich_p > 0 else "train"
    world.RICH_P = rich_p
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    W, H = world.ASPECTS[asp]
    f = world.NOISE_DOWN
    caps, tg, ctx, cls, off, nz = [], [], [], [], [], []
    while len(caps) < k:
        if kind == "t2i":
            noise = None
            if coupled:  # rounded first: the layout must follow the noise the step will see
                noise = nrng.standard_normal((world.N_LAYOUT_CH, H // f, W // f), dtype=np.float32).astype(np.float16)
            cap, _, sc = world.sample_t2i(rng, "train", aspect=asp, layout=layout, mode=mode,
                                          layout_noise=None if noise is None else noise.astype(np.float32))
            if not _caption_fits(cap, max_len):
                continue
            caps.append(cap)
            if noise is not None:
                nz.append(torch.from_numpy(noise))
            tg.append(to_tensor(world.render(sc)))
            c, o = world.render_labels(sc)
        else:
            ins, src, tgt, _ = world.sample_edit(rng, aspect=asp, layout=layout, mode=mode, weights=edit_mix,
                                                add_rule=add_rule, gradient=gradient, blocked=blocked)
            if not _caption_fits(ins, max_len):
                continue
            s_img, t_img = world.render_pair(src, tgt)
            caps.append(ins)
            tg.append(to_tensor(t_img))
            ctx.append(to_tensor(s_img))
            c, o = world.render_labels(tgt)
        cls.append(torch.from_numpy(c))
        off.append(torch.from_numpy(o))
    zt = analytic_latents(torch.stack(tg))
    zc = analytic_latents(torch.stack(ctx)) if ctx else None
    return kind, asp, caps, zt, zc, torch.stack(cls), torch.stack(off).to(torch.float16), \
        (torch.stack(nz) if nz else None)


def _worker_init():
    torch.set_num_threads(1)  # one process per core


class _Ring:
    """One bucket of the pool: preallocated tensors used as a ring buffer (the oldest samples are
    overwritten first), so that adding a chunk and drawing a batch are a few tensor ops each, with
    no per-sample Python objects (on a GPU the main process otherwise starves the device)."""

    def __init__(self, cap: int, like: dict[str, torch.Tensor], device: torch.device):
        """``like``: one chunk of rows per field (pe, pooled, z, the labels cls and off and, for edits,
        ctx): the shapes and dtypes."""
        self.cap, self.len, self.ptr = cap, 0, 0
        self.fields = {k: torch.empty((cap, *v.shape[1:]), dtype=v.dtype, device=device) for k, v in like.items()}

    def add(self, **rows: torch.Tensor):
        n = next(iter(rows.values())).shape[0]
        if n > self.cap:  # only the newest cap rows would survive anyway
            rows = {k: v[-self.cap:] for k, v in rows.items()}
            n = self.cap
        first = min(n, self.cap - self.ptr)
        for k, v in rows.items():
            dst = self.fields[k]
            dst[self.ptr:self.ptr + first] = v[:first]
            dst[:n - first] = v[first:]
        self.ptr = (self.ptr + n) % self.cap
        self.len = min(self.cap, self.len + n)

    def get(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.index_select(0, idx) for k, v in self.fields.items()}


class Pool:
    """Rolling pool of encoded samples, bucketed by (kind, aspect), held on ``device``.

    Rendering runs in this process or, with ``workers > 0``, in a process pool one refresh ahead
    (what a GPU run needs: there the 2-core render would starve the device). Text encoding runs on
    ``device``; each bucket is a ring of fp16 tensors on ``device`` (see ``_Ring``)."""

    def __init__(self, pipe: FluxPipeline, max_len: int, cap: int, workers: int = 0,
                 device: torch.device | str = "cpu", chunk: int = 64, coupled: bool = False,
                 layout: str = "canonical", rich_p: float = 0.0, edit_mix: dict[str, float] | None = None,
                 add_rule: str = "first", gradient: str = "any", blocked: str = "skip"):
        self.pipe = pipe
        self.add_rule = add_rule
        self.gradient = gradient
        self.blocked = blocked
        self.edit_mix = edit_mix
        self.coupled = coupled
        self.layout = layout
        self.rich_p = rich_p
        self.chunk = chunk
        self.max_len = max_len
        self.cap = cap
        self.device = torch.device(device)
        self.buckets: dict[tuple, _Ring] = {}
        self.n = 0
        self.generated = 0
        self._empty = None
        self._procs = None
        self._pending = None
        if workers > 0:
            import multiprocessing

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._procs = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)

    def close(self):
        if self._procs is not None:
            self._procs.terminate()
            self._procs = None

    @torch.no_grad()
    def encode_text(self, prompts: list[str]):
        """Text embeddings exactly as ``FluxPipeline.encode_prompt`` computes them, in one encoder pass.

        Both slots hold the same MiniLM and both tokenizers pad to 32 tokens, so the CLIP slot's
        ``pooler_output`` and the T5 slot's ``last_hidden_state`` come from the same forward pass;
        ``encode_prompt`` runs it twice (half of the data cost). ``check_text_encoding`` asserts
        the equality. Returned as fp16 on the pool's device."""
        ids = self.pipe.tokenizer_2(prompts, padding="max_length", max_length=self.max_len, truncation=True,
                                    return_tensors="pt").input_ids.to(self.device)
        out = self.pipe.text_encoder_2(ids, output_hidden_states=False)
        return out.last_hidden_state.to(torch.float16), out.pooler_output.to(torch.float16)

    @torch.no_grad()
    def check_text_encoding(self, prompts: list[str]):
        pe, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                max_sequence_length=self.max_len)
        pe1, pooled1 = self.encode_text(prompts)
        assert torch.equal(pe.to(torch.float16), pe1) and torch.equal(pooled.to(torch.float16), pooled1), \
            "one-pass text encoding differs from FluxPipeline.encode_prompt"

    def empty(self):
        if self._empty is None:
            self._empty = self.encode_text([bp.NEGATIVE_PROMPT])
        return self._empty

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled analytic latents -> what the transformer sees (== the VAE encoder's mode,
        shifted and scaled as FluxPipeline does)."""
        cfg = self.pipe.vae.config
        return ((z.to(self.device) - cfg.shift_factor) * cfg.scaling_factor).to(torch.float16)

    def _jobs(self, n: int, rng: random.Random, edit_frac: float) -> list[tuple]:
        per_aspect = max(1, n // (len(world.ASPECTS) * 2))
        jobs = []
        for asp in world.ASPECTS:
            for kind in ("t2i", "edit"):
                k = int(round(per_aspect * 2 * (edit_frac if kind == "edit" else 1 - edit_frac)))
                while k > 0:  # chunks of at most self.chunk samples keep many workers evenly busy
                    jobs.append((rng.getrandbits(63), kind, asp, min(k, self.chunk), self.max_len, self.coupled,
                                 self.layout, self.rich_p, self.edit_mix, self.add_rule,
                                 self.gradient, self.blocked))
                    k -= self.chunk
        return jobs

    def ready(self) -> bool:
        """True when generate() would not wait (nothing pending, or the pending chunks are done)."""
        return self._pending is None or self._pending.ready()

    @torch.no_grad()
    def generate(self, n: int, rng: random.Random, edit_frac: float):
        """Add about ``n`` new samples. With worker processes the chunks rendered since the last
        call are encoded now and the next ones start rendering, so training never waits on them
        (after the first call, which waits)."""
        jobs = self._jobs(n, rng, edit_frac)
        if self._procs is None:
            chunks = map(render_chunk, jobs)
        else:
            if self._pending is None:
                self._pending = self._procs.map_async(render_chunk, jobs)
                jobs = self._jobs(n, rng, edit_frac)
            chunks = self._pending.get()
            self._pending = self._procs.map_async(render_chunk, jobs)
        for kind, asp, caps, tg, ctx, cls, off, nz in chunks:
            self._add(kind, asp, caps, tg, ctx, cls, off, nz)
        self.n = sum(b.len for b in self.buckets.values())

    def _add(self, kind, asp, caps, tg, ctx, cls, off, nz=None):
        pe, pooled = self.encode_text(caps)
        rows = {"pe": pe, "pooled": pooled, "z": self.scale_latents(tg), "cls": cls.to(self.device),
                "off": off.to(self.device)}
        if nz is not None:
            rows["noise"] = nz.to(self.device)
        if ctx is not None:
            rows["ctx"] = self.scale_latents(ctx)
        key = (kind, asp)
        if key not in self.buckets:
            cap = max(1, self.cap // (len(world.ASPECTS) * 2))
            self.buckets[key] = _Ring(cap, rows, self.device)
        self.buckets[key].add(**rows)
        self.generated += len(caps)

    def batch(self, rng: random.Random, bs: int, edit_frac: float):
        kind = "edit" if rng.random() < edit_frac else "t2i"
        keys = [k for k in self.buckets if k[0] == kind and self.buckets[k].len]
        key = rng.choice(keys)
        b = self.buckets[key]
        idx = torch.tensor([rng.randrange(b.len) for _ in range(bs)], device=self.device)
        f = b.get(idx)
        ctx = f["ctx"].float() if kind == "edit" else None
        aux = {"cls": f["cls"], "off": f["off"].float()}
        if "noise" in f:
            aux["noise"] = f["noise"].float()
        return kind, f["pe"].float(), f["pooled"].float(), f["z"].float(), ctx, aux


# ---------------------------------------------------------------------------
# Transformer step (mirrors FluxPipeline / FluxKontextPipeline exactly)
# ---------------------------------------------------------------------------
def detail_weights(z: torch.Tensor, ctx: torch.Tensor | None, strength: float,
                   edit_weights: str = "joint") -> torch.Tensor:
    """Per-latent-pixel loss weights (B,1,h,w), mean 1 per image: 1 + strength x (normalised
    edge map, dilated by one pixel), plus where an edit changes the image.

    Why: in this world most pixels are flat background and flat shape interiors, which the model
    learns first; a shape's identity (circle vs heart vs star) lives in the few pixels along its
    outline, so plain MSE gives it almost no gradient and samples stay blobs long after colours
    and positions are right. Up-weighting those pixels aims the same compute at what is missing.

    ``edit_weights``: how an edit's change map joins the edge map. "joint" (runs 1-10): their sum is
    normalised once, so a change-background edit, whose change covers the whole background, drowns
    the outlines, and those edits came out with blobbed objects (run 9: 3/8 right, session 10).
    "separate": each map is normalised to mean 1 on its own before they are added, so the outlines
    keep their share whatever the edit changes."""
    def edges(x):
        gx = (x[..., :, 1:] - x[..., :, :-1]).abs().sum(1, keepdim=True)
        gy = (x[..., 1:, :] - x[..., :-1, :]).abs().sum(1, keepdim=True)
        return F.pad(gx, (0, 1, 0, 0)) + F.pad(gy, (0, 0, 0, 1))

    def normalised(e):
        e = F.max_pool2d(e, 3, stride=1, padding=1)
        return e / (e.mean(dim=(2, 3), keepdim=True) + 1e-6)

    if ctx is None:
        e = normalised(edges(z))
    elif edit_weights == "separate":
        e = normalised(edges(z)) + normalised((z - ctx).abs().sum(1, keepdim=True))
    else:
        e = normalised(edges(z) + (z - ctx).abs().sum(1, keepdim=True))
    wt = 1.0 + strength * e
    return wt / wt.mean(dim=(2, 3), keepdim=True)


class AuxHead(torch.nn.Module):
    """Training-only semantic head on the image tokens after one transformer block (never exported).

    Why: samples from the plain flow-matching objective followed the prompt's colours and little
    else (same seed, "a big red circle/square/star/... in the center": the same red blob, off
    centre). Swapping a true prompt for an empty one lowered the x0 error at noise 0.9 by only 8 %:
    after 8k steps the model had barely learnt to route position, shape and count words to image
    tokens. The MSE signal for that is weak (a shape lives in a few outline pixels), while the
    renderer knows exactly what every pixel is. This head asks the block's image tokens to say, for
    each of the 4x4 label pixels a token covers, the colour and shape class of the object there and
    the pixel's offset from that object's centre (``world.render_labels``): at high noise that is
    the prompt's layout, which only the text can give. The same idea as REPA (aligning early
    diffusion-transformer features to a strong representation speeds training up many times), with
    the renderer's ground truth as the representation."""

    N_COLOUR, N_SHAPE = len(world.COLOURS) + 1, len(world.SHAPES) + 1
    # one token = 2x2 latent pixels (packing) of 8x8 image pixels (VAE) = 16x16 image pixels
    TOKEN_LABEL_PX = 16 // world.LABEL_FACTOR
    SUB = TOKEN_LABEL_PX ** 2

    def __init__(self, width: int):
        super().__init__()
        self.proj = torch.nn.Linear(width, self.SUB * (self.N_COLOUR + self.N_SHAPE + 2))
        self.feats: torch.Tensor | None = None
        self._hook = None
        self.history: list[torch.Tensor] = []

    def attach(self, block: torch.nn.Module):
        """Keep ``block``'s image-stream output (diffusers Flux blocks return (text, image))."""
        def keep(_m, _inp, out):
            self.feats = out[1]
        self._hook = block.register_forward_hook(keep)

    @staticmethod
    def to_tokens(lab: torch.Tensor) -> torch.Tensor:
        """(B, K, h4, w4) label maps -> (B, tokens, K, 16) in ``FluxPipeline._pack_latents`` token order
        (one token covers 4x4 label pixels: 2x2 latent pixels of 2x2 label pixels each)."""
        B, K, h, w = lab.shape
        t = AuxHead.TOKEN_LABEL_PX
        return lab.view(B, K, h // t, t, w // t, t).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // t) * (w // t), K, t * t)

    def loss(self, n_img: int, aux: dict, keep: torch.Tensor | None) -> torch.Tensor:
        feats = self.feats[:, :n_img].float()
        self.feats = None
        B, N, _ = feats.shape
        out = self.proj(feats).view(B, N, self.SUB, -1)
        cls = self.to_tokens(aux["cls"]).long()  # (B, N, 2, 16)
        off = self.to_tokens(aux["off"])
        nc, ns = self.N_COLOUR, self.N_SHAPE
        ce_c = F.cross_entropy(out[..., :nc].reshape(-1, nc), cls[:, :, 0].reshape(-1), reduction="none").view(B, -1)
        ce_s = F.cross_entropy(out[..., nc:nc + ns].reshape(-1, ns), cls[:, :, 1].reshape(-1),
                               reduction="none").view(B, -1)
        obj = (cls[:, :, 0] > 0).float().unsqueeze(-1)  # (B, N, 16, 1)
        off_err = ((out[..., nc + ns:] - off.permute(0, 1, 3, 2)) ** 2 * obj).view(B, -1).sum(1) \
            / obj.view(B, -1).sum(1).clamp(min=1) / 2
        per = ce_c.mean(1) + ce_s.mean(1) + off_err
        loss = (per * keep).sum() / keep.sum().clamp(min=1) if keep is not None else per.mean()
        self.history.append(loss.detach())  # for the progress line (no host sync here)
        return loss


def flow_loss(transformer, pe, pooled, z, ctx, gen: torch.Generator, train_shift: float = 1.0,
              bf16: bool = False, edge_weight: float = 0.0, aux_head: AuxHead | None = None,
              aux: dict | None = None, aux_keep: torch.Tensor | None = None, aux_weight: float = 0.0,
              edit_weights: str = "joint"):
    """Rectified-flow loss (plus ``aux_weight`` x the auxiliary head's loss when one is attached)."""
    B, C, h, w = z.shape
    P = FluxPipeline
    x0 = P._pack_latents(z, B, C, h, w)
    ids = P._prepare_latent_image_ids(B, h // 2, w // 2, z.device, z.dtype)
    N = x0.shape[1]
    # draws come from ``gen`` on its own device (the CPU generator on a CPU run, so a run's noise is
    # fixed by its seed; a device generator on a GPU, where host-side draws would stall the device)
    dev = gen.device
    if aux is not None and "noise" in aux:  # noise-coupled sample: its layout was read from this noise
        noise = P._pack_latents(aux["noise"], B, C, h, w)
    else:
        noise = torch.randn(x0.shape, generator=gen, device=dev).to(z.device)
    u = torch.rand(B, generator=gen, device=dev)
    ln = torch.sigmoid(torch.randn(B, generator=gen, device=dev) * 1.0)
    s = torch.where(u < 0.8, ln, torch.rand(B, generator=gen, device=dev))
    s = (train_shift * s / (1 + (train_shift - 1) * s)).clamp(1e-3, 1.0).to(z.device)  # the scheduler's shift
    xt = (1 - s[:, None, None]) * x0 + s[:, None, None] * noise
    hidden = xt
    if ctx is not None:
        c = P._pack_latents(ctx, B, C, h, w)
        cid = P._prepare_latent_image_ids(B, h // 2, w // 2, z.device, z.dtype)
        cid[..., 0] = 1
        hidden = torch.cat([xt, c], dim=1)
        ids = torch.cat([ids, cid], dim=0)
    txt_ids = torch.zeros(pe.shape[1], 3, device=z.device)
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = transformer(hidden_states=hidden, timestep=s, guidance=None, pooled_projections=pooled,
                          encoder_hidden_states=pe, txt_ids=txt_ids, img_ids=ids, return_dict=False)[0]
    out = out[:, :N].float()
    if edge_weight <= 0:
        loss = F.mse_loss(out, noise - x0)
    else:
        wt = detail_weights(z, ctx, edge_weight, edit_weights).expand(B, C, h, w)
        loss = ((out - (noise - x0)) ** 2 * P._pack_latents(wt, B, C, h, w)).mean()
    if aux_head is not None and aux_weight > 0:
        loss = loss + aux_weight * aux_head.loss(N, aux, aux_keep)
    return loss


def init_from_pipeline(path: Path) -> dict:
    """An --init-from source made from a saved pipeline (e.g. the shipped models/darkroom-mini, or an
    older commit's, ``git archive <commit> models/darkroom-mini | tar -x -C DIR``) instead of a ckpt.pt.

    Checkpoints stay in the run folder and do not outlive its machine; the committed pipeline does.
    It holds the EMA weights only (fp16), so the training weights start as the EMA's, and the
    training-only semantic head starts fresh (its loss falls back to the run's level in ~300 steps)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    tr = FluxTransformer2DModel.from_pretrained(path, subfolder="transformer").float()
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").float()
    meta_file = path / "darkroom_mini.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    sd = tr.state_dict()
    return {"step": int(meta.get("train_step", 0)), "transformer": sd, "ema": sd, "vae": vae.state_dict(),
            "vae_shift": vae.config.shift_factor, "vae_scale": vae.config.scaling_factor,
            "args": {"heads": tr.config.num_attention_heads, "double": tr.config.num_layers,
                     "single": tr.config.num_single_layers}}


def parse_edit_mix(text: str) -> dict[str, float]:
    """'add=2,move=1.5' -> world.EDIT_WEIGHTS with those kinds replaced (the --edit-mix argparse type:
    an ArgumentTypeError becomes a usage error naming the option)."""
    weights = dict(world.EDIT_WEIGHTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in weights:
            raise argparse.ArgumentTypeError(f"{part!r}: expected KIND=WEIGHT with KIND one of {world.EDIT_KINDS}")
        try:
            w = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight is not a number") from None
        if not w >= 0:
            raise argparse.ArgumentTypeError(f"{part!r}: a weight must be >= 0")
        weights[kind] = w
    if not any(weights.values()):
        raise argparse.ArgumentTypeError("at least one edit kind needs a weight above 0")
    return weights


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/darkroom-mini")
    ap.add_argument("--run", default=None, help="run dir (default training/runs/<name>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--hours", type=float, default=1.95, help="total wall-clock budget incl. VAE")
    ap.add_argument("--dec-minutes", type=float, default=28.0,
                    help="VAE decoder training budget (stage 2, after the transformer; inside --hours)")
    ap.add_argument("--dec-blur", type=float, default=0.0,
                    help="decoder stage: soften each training latent by a Gaussian of sigma up to this many pooled "
                         "pixels, so that the decoder draws soft sampled shapes crisply (0: off, runs 1-11; 1.0 "
                         "scored worse in session 11, see train_decoder)")
    ap.add_argument("--decoder-only", action="store_true",
                    help="only train the VAE decoder (writes <run>/decoder.pt); can run in parallel")
    ap.add_argument("--init-from", default=None,
                    help="start from another run's ckpt.pt (transformer, EMA, aux head; the VAE unless "
                         "--decoder-from), or from a saved pipeline folder such as models/darkroom-mini "
                         "(see init_from_pipeline), with a fresh optimizer and schedule: training continued "
                         "across sessions or machines, or a recipe change on a trained model")
    ap.add_argument("--decoder-from", default=None,
                    help="use a decoder state dict trained separately (skips the decoder stage)")
    ap.add_argument("--batch", type=int, default=16, help="16 learnt faster per sample than 32 on 2 cores (A/B)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--heads", type=int, default=bp.TRANSFORMER_CFG["num_attention_heads"],
                    help="attention heads of 32 dims (width = 32 x heads)")
    ap.add_argument("--double", type=int, default=bp.TRANSFORMER_CFG["num_layers"], help="double-stream blocks")
    ap.add_argument("--single", type=int, default=bp.TRANSFORMER_CFG["num_single_layers"], help="single-stream blocks")
    ap.add_argument("--init", default="default", choices=["default", "adaln-zero"],
                    help="transformer initialisation (see build_pipeline.make_transformer)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="train this many steps (the lr schedule follows steps) instead of --hours")
    ap.add_argument("--edge-weight", type=float, default=4.0,
                    help="extra loss weight on shape edges and edited regions (see flow_loss)")
    ap.add_argument("--edit-weights", default="joint", choices=["joint", "separate"],
                    help="how an edit's change map joins the edge map in the detail weights: normalised together "
                         "(joint, runs 1-10) or each on its own (separate: a background change no longer drowns "
                         "the outlines; see detail_weights)")
    ap.add_argument("--aux-weight", type=float, default=0.3,
                    help="weight of the training-only semantic head's loss (see AuxHead; 0.3 from an A/B "
                         "and run 4); 0: no head")
    ap.add_argument("--aux-block", type=int, default=-1,
                    help="index into the double-stream blocks whose image output the head reads")
    ap.add_argument("--coupling", default="none", choices=["none", "noise"],
                    help="noise: each text-to-image sample's layout is read from its own noise "
                         "(world.coupled_place): straight flow paths, sharp targets at every noise level; "
                         "sampled with the deterministic sampler. Tried in session 5: not learnt in 30 "
                         "minutes (docs/darkroom-mini.md)")
    ap.add_argument("--layout", default="canonical", choices=["canonical", "spread", "random"],
                    help="canonical: one layout per prompt (world.canonical_place), so the target is sharp "
                         "from pure noise; spread: canonical, but a list takes the arrangement with the widest "
                         "gaps (run 12, not adopted); random: drawn anywhere the prompt allows (runs 1-5)")
    ap.add_argument("--rich-p", type=float, default=0.0,
                    help="how often a training caption's word or frame comes from world.EXTRA_WORDS (more "
                         "synonyms and frames, none of the paraphrase set's), so unseen wordings land among seen "
                         "ones; 0 (runs 1-6, the best held-out score): the core two-ish words per concept. Run 7 "
                         "used 0.5 and run 8 0.2: paraphrases gained, held-out lost more (docs/darkroom-mini.md)")
    ap.add_argument("--edit-frac", type=float, default=0.3)
    ap.add_argument("--edit-mix", type=parse_edit_mix, default=None, metavar="KIND=W,...",
                    help="how often each edit kind is drawn, e.g. 'add=2,move=1.5' (kinds not named keep "
                         f"world.EDIT_WEIGHTS: {world.EDIT_WEIGHTS})")
    ap.add_argument("--add-spot", default="first", choices=world.ADD_SPOTS,
                    help="where a canonical add without a position word goes (world.add_spot): first, the "
                         "first free of centre, left, right, top, bottom (runs up to 16); roomiest, the one "
                         "with the most room, a rule that nudging a source object flips less often; nearest, the free "
                         "point nearest the image centre, which moves with the objects instead of jumping")
    ap.add_argument("--edit-gradient", default="any", choices=world.GRADIENT_DIRS,
                    help="which way a canonical edit's new gradient background runs: any, horizontal or "
                         "vertical at random (runs up to 16), though no instruction says which; v, top to bottom")
    ap.add_argument("--blocked-spot", default="skip", choices=world.BLOCKED_SPOTS,
                    help="a canonical move or positioned add whose region centre is taken (world.position_spot): "
                         "skip, redraw the edit (runs up to 16; a third of real edits are like that); nearest, "
                         "the free point of the region nearest its centre")
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--pool", type=int, default=60000)
    ap.add_argument("--refresh-every", type=int, default=40, help="steps between pool refreshes")
    ap.add_argument("--refresh-n", type=int, default=256)
    ap.add_argument("--init-pool", type=int, default=2500)
    ap.add_argument("--async-data", action="store_true",
                    help="refresh the pool whenever the data workers have a refresh ready instead of "
                         "every --refresh-every steps (GPU runs: the device never waits on rendering; "
                         "the data order then depends on timing, so runs are not bit-reproducible)")
    ap.add_argument("--ckpt-min", type=float, default=10.0)
    ap.add_argument("--log-every", type=int, default=25, help="steps between progress lines")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="profile this many steps (after 50) with torch.profiler and log the top ops")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (TF32; see --bf16); the result is the same pipeline")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast on CUDA (off by default: on an H200 with torch 2.11+cu130 a bf16 "
                         "GEMM in the backward pass failed with CUBLAS_STATUS_EXECUTION_FAILED; TF32 works)")
    ap.add_argument("--data-workers", type=int, default=0,
                    help="processes rendering training data one refresh ahead (0: in this process)")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--train-shift", type=float, default=2.0, help="timestep shift for training noise levels")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.smoke:
        args.batch = 4
        args.refresh_n, args.refresh_every = 24, 3
        args.hours = 0.0
        args.max_steps = 6
    run = Path(args.run or f"training/runs/{'smoke' if args.smoke else 'mini-s%d' % args.seed}")
    run.mkdir(parents=True, exist_ok=True)
    log(f"args {vars(args)}")
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    ckpt_path = run / "ckpt.pt"

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (outside bf16 autocast)
        torch.backends.cudnn.allow_tf32 = True
    enc = bp.load_text_encoder().to(device)
    state = None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        log(f"resuming from step {state['step']} (elapsed {state['elapsed'] / 60:.1f} min)")

    init = None  # --init-from: another run's weights, this run's optimizer and schedule
    if state is None and args.init_from:
        init = (init_from_pipeline(Path(args.init_from)) if Path(args.init_from).is_dir()
                else torch.load(args.init_from, map_location="cpu", weights_only=False))

    vae = bp.make_vae()
    prev_elapsed = 0.0
    if init is not None:  # the transformer was trained on that run's latent scaling: keep it
        vae.load_state_dict(init["vae"])
        vae.register_to_config(shift_factor=init["vae_shift"], scaling_factor=init["vae_scale"])
    elif state is not None:
        vae.load_state_dict(state["vae"])
        vae.register_to_config(shift_factor=state["vae_shift"], scaling_factor=state["vae_scale"])
        prev_elapsed = state["elapsed"]
    else:
        shift, scale = latent_stats(random.Random(args.seed + 1), 12 if args.smoke else 96)
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        log(f"latent shift {shift:.4f} scale {scale:.4f}")
    if args.decoder_only:
        if args.decoder_from:  # continue a decoder trained earlier (the latent space never changes)
            vae.load_state_dict(torch.load(args.decoder_from, map_location="cpu"))
            log(f"decoder continues from {args.decoder_from}")
        decoder_stage(vae, args, save_to=run / "decoder.pt")
        log("decoder done")
        return
    vae.eval().requires_grad_(False)
    if args.decoder_from:  # loaded now so that every export on the way has the finished decoder
        vae.load_state_dict(torch.load(args.decoder_from, map_location="cpu"))
        log(f"decoder loaded from {args.decoder_from}")

    for src in (state, init):  # a resumed or continued run keeps its architecture
        if src is not None and "args" in src:
            for k in ("heads", "double", "single"):
                if k in src["args"]:
                    setattr(args, k, src["args"][k])
            if "aux_head" in src:  # and its head (on the block it was trained on); a weight given here wins
                args.aux_block = src["args"]["aux_block"]
                if args.aux_weight <= 0:
                    args.aux_weight = src["args"]["aux_weight"]
    transformer = bp.make_transformer(init=args.init, num_attention_heads=args.heads, num_layers=args.double,
                                      num_single_layers=args.single)
    pipe = bp.assemble(transformer, vae, text_encoder=enc)
    transformer.to(device)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99),
                            fused=device.type == "cuda")
    # on a CPU a host check per step costs nothing; on a GPU it would stall the host every step
    sync_guard = device.type != "cuda"
    step = 0
    if state is not None and "transformer" in state:
        transformer.load_state_dict(state["transformer"])
        ema.load_state_dict(state["ema"])
        step = state["step"]
    if init is not None:
        transformer.load_state_dict(init["transformer"])
        ema.load_state_dict(init["ema"])
        log(f"weights from {args.init_from} (its step {init['step']}); fresh optimizer and schedule")
    aux_head = None
    if args.aux_weight > 0:  # after the EMA copy: the hook and head stay off the exported model
        aux_head = AuxHead(transformer.inner_dim).to(device)
        aux_head.attach(transformer.transformer_blocks[args.aux_block])
        opt.add_param_group({"params": list(aux_head.parameters())})
        for src in (state, init):
            if src is not None and "aux_head" in src:
                aux_head.load_state_dict(src["aux_head"])
    if state is not None and "transformer" in state:  # after the head's param group exists
        sd = state["opt"]
        if len(sd["param_groups"]) < len(opt.param_groups):  # a run without the head resumed with one
            fresh = opt.state_dict()["param_groups"][len(sd["param_groups"]):]
            sd = {"state": sd["state"], "param_groups": sd["param_groups"] + fresh}
        opt.load_state_dict(sd)
    ema_params, train_params = list(ema.parameters()), list(transformer.parameters())
    clip_params = train_params + (list(aux_head.parameters()) if aux_head is not None else [])
    # the EMA's warm-up counts the steps its weights have seen: a run continued with --init-from
    # keeps the loaded EMA instead of restarting at a decay of 0.18 and forgetting it in 10 steps
    ema_step0 = init["step"] if init is not None else 0
    nparams = sum(p.numel() for p in transformer.parameters())
    log(f"transformer params {nparams / 1e6:.2f}M")

    data_rng = random.Random(args.seed * 1000003 + step)
    gen = torch.Generator(device if device.type == "cuda" else "cpu").manual_seed(args.seed * 7919 + step)
    pool = Pool(pipe, bp.MAX_SEQ, args.pool, workers=args.data_workers, device=device,
                coupled=args.coupling == "noise", layout=args.layout, rich_p=args.rich_p,
                edit_mix=args.edit_mix, add_rule=args.add_spot, gradient=args.edit_gradient,
                blocked=args.blocked_spot)
    t0 = time.time()
    init_n = 48 if args.smoke else args.init_pool
    pool.generate(init_n, data_rng, args.edit_frac)
    empty_pe, empty_pooled = pool.empty()
    pool.check_text_encoding(["a crimson ball above a navy box", bp.NEGATIVE_PROMPT, "make the red star blue"])
    log(f"initial pool {pool.n} samples in {time.time() - t0:.1f}s")

    budget = args.hours * 3600 - (0 if args.decoder_from else args.dec_minutes * 60)
    seg_start = time.time()
    last_ckpt = time.time()
    losses = {"t2i": [], "edit": []}
    n_seen = 0
    t_log = time.time()
    data_s = 0.0  # time in pool refreshes since the last progress line (encoding, waiting on workers)

    def elapsed():
        return prev_elapsed + (time.time() - seg_start)

    def save_ckpt(final=False):
        torch.save({"step": step, "elapsed": elapsed(), "transformer": transformer.state_dict(),
                    "ema": ema.state_dict(), "opt": opt.state_dict(), "vae": vae.state_dict(),
                    "vae_shift": vae.config.shift_factor, "vae_scale": vae.config.scaling_factor,
                    "args": vars(args), **({"aux_head": aux_head.state_dict()} if aux_head else {})},
                   str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        exp = run / "export"
        # a noise-coupled model reads its layout from the initial noise: a stochastic sampler would
        # replace that noise at every step, so it ships with the deterministic one
        sched = {"stochastic_sampling": False} if args.coupling == "noise" else None
        bp.save_pipeline(ema, vae, exp, {"train_step": step, "train_minutes": round(elapsed() / 60, 1),
                                         "seed": args.seed}, scheduler=sched)
        log(f"checkpoint step {step} -> {ckpt_path}, export -> {exp}")
        if final:
            bp.save_pipeline(ema, vae, args.out, {"train_step": step, "train_minutes": round(elapsed() / 60, 1),
                                                  "seed": args.seed}, scheduler=sched)
            log(f"final pipeline -> {args.out}")

    transformer.train()
    prof = None  # --profile-steps: a torch.profiler window after 50 steps of warm-up, printed once
    while True:
        if args.profile_steps and step == 50 and prof is None:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            prof = profile(activities=acts)
            prof.__enter__()
        if prof is not None and step == 50 + args.profile_steps:
            prof.__exit__(None, None, None)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            for sort in dict.fromkeys(("self_cpu_time_total", key)):
                log(f"profile of {args.profile_steps} steps by {sort}:\n"
                    + prof.key_averages().table(sort_by=sort, row_limit=18))
            prof = False
        if args.max_steps is not None and step >= args.max_steps:
            break
        if args.max_steps is not None:  # a step budget (A/B runs: equal steps whatever shares the cores)
            frac = step / args.max_steps
        else:
            frac = elapsed() / budget if budget > 0 else 1.0
        if args.max_steps is None and frac >= 1.0:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        kind, pe, pooled, z, ctx, aux = pool.batch(data_rng, args.batch, args.edit_frac)
        aux_keep = None
        if args.cfg_drop > 0:
            # unconditional samples for classifier-free guidance: empty prompt; for edits the
            # unconditional target is the unchanged source image (identity edit)
            drop = (torch.rand(pe.shape[0], generator=gen, device=gen.device) < args.cfg_drop).to(device)
            pe = torch.where(drop[:, None, None], empty_pe[0].float(), pe)
            pooled = torch.where(drop[:, None], empty_pooled[0].float(), pooled)
            if ctx is not None:
                z = torch.where(drop[:, None, None, None], ctx, z)
                # the labels are the target's, and a dropped edit's target is the source. Dropped
                # text-to-image samples keep theirs: like the flow loss, the head then learns the
                # unconditional layout, which is what CFG subtracts
                aux_keep = (~drop).float()
        loss = flow_loss(transformer, pe, pooled, z, ctx, gen, args.train_shift, bf16=args.bf16,
                         edge_weight=args.edge_weight, aux_head=aux_head, aux=aux, aux_keep=aux_keep,
                         aux_weight=args.aux_weight, edit_weights=args.edit_weights)
        opt.zero_grad(set_to_none=True)
        if sync_guard and not torch.isfinite(loss):  # an unattended run must not die (or poison the EMA) on one bad batch
            log(f"step {step}: non-finite loss, batch skipped")
            continue
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
        if sync_guard:
            if not torch.isfinite(gnorm):
                log(f"step {step}: non-finite gradient, batch skipped")
                continue
        else:  # same guard without stalling the host on the device: a bad batch's update is zeroed
            ok = torch.isfinite(gnorm)
            for p in clip_params:  # the head's too: a NaN head would poison every later aux loss
                if p.grad is not None:
                    p.grad.copy_(torch.where(ok, p.grad, torch.zeros_like(p.grad)))
        opt.step()
        step += 1
        n_seen += z.shape[0]
        d = min(args.ema, (1 + ema_step0 + step) / (10 + ema_step0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, train_params, 1 - d)
        losses[kind].append(loss.detach())
        if (pool.ready() if args.async_data else step % args.refresh_every == 0):
            t_data = time.time()
            pool.generate(args.refresh_n, data_rng, args.edit_frac)
            data_s += time.time() - t_data
        if step % args.log_every == 0 or args.smoke:
            dt = time.time() - t_log
            lt = torch.stack(losses["t2i"][-50:]).mean().item() if losses["t2i"] else float("nan")
            le = torch.stack(losses["edit"][-50:]).mean().item() if losses["edit"] else float("nan")
            losses = {k: v[-50:] for k, v in losses.items()}
            la = ""
            if aux_head is not None and aux_head.history:
                la = f" aux {torch.stack(aux_head.history[-50:]).mean().item():.4f}"
                aux_head.history = aux_head.history[-50:]
            log(f"step {step} loss_t2i {lt:.4f} loss_edit {le:.4f}{la} lr {lr:.2e} {n_seen / max(dt, 1e-6):.1f} samp/s "
                f"pool {pool.n} gen {pool.generated} data {100 * data_s / max(dt, 1e-6):.0f}% "
                f"elapsed {elapsed() / 60:.1f}m")
            n_seen, t_log, data_s = 0, time.time(), 0.0
        if time.time() - last_ckpt > args.ckpt_min * 60:
            save_ckpt()
            last_ckpt = time.time()
    pool.close()
    # --init-from brought a trained decoder, also when this is a resumed continuation (init is None then: the
    # weights came from the checkpoint, which carries the init run's decoder, so the flag is the only trace)
    continued = bool(args.init_from or (state is not None and state["args"].get("init_from")))
    if not args.decoder_from and not continued and args.dec_minutes > 0:
        decoder_stage(vae, args)
    save_ckpt(final=True)
    (run / "DONE").write_text(json.dumps({"step": step, "elapsed_min": elapsed() / 60}))
    log("done")


if __name__ == "__main__":
    main()
