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


def train_decoder(vae, minutes: float, rng: random.Random, batch: int = 4, lr: float = 3e-4, log_every: int = 25,
                  max_steps: int | None = None, noise: float = 0.04, save_to: Path | None = None,
                  save_every_min: float = 5.0):
    """Train only the VAE decoder (+post_quant_conv) on analytic latents -> image.

    The encoder is fixed (analytic), so the latent space the transformer sees never
    changes: this stage can run before, after or in parallel with transformer training.
    Latents get small Gaussian noise so the decoder also cleans up imperfect
    generated latents."""
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


# ---------------------------------------------------------------------------
# Data pool
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tokenizer(max_len: int):
    return bp.make_tokenizer(max_len)  # one per (worker) process and length


def _caption_fits(text: str, max_len: int) -> bool:
    return len(_tokenizer(max_len)(text).input_ids) <= max_len


def render_chunk(job: tuple) -> tuple:
    """Render one chunk of training samples: (seed, kind, aspect, k, max_len) -> (kind, aspect,
    captions, target images, context images). A top-level function so that --data-workers
    processes can run it; the chunk's own seed makes the data independent of the worker count."""
    seed, kind, asp, k, max_len = job
    rng = random.Random(seed)
    caps, tg, ctx = [], [], []
    while len(caps) < k:
        if kind == "t2i":
            cap, _, sc = world.sample_t2i(rng, "train", aspect=asp)
            if not _caption_fits(cap, max_len):
                continue
            caps.append(cap)
            tg.append(np.asarray(world.render(sc)))
        else:
            ins, src, tgt, _ = world.sample_edit(rng, aspect=asp)
            if not _caption_fits(ins, max_len):
                continue
            s_img, t_img = world.render_pair(src, tgt)
            caps.append(ins)
            tg.append(np.asarray(t_img))
            ctx.append(np.asarray(s_img))
    return kind, asp, caps, tg, ctx


class Pool:
    """Rolling pool of encoded samples, bucketed by (kind, aspect).

    Rendering runs in this process or, with ``workers > 0``, in a process pool one refresh ahead
    (what a GPU run needs: there the 2-core render would starve the device). Text encoding runs on
    ``device``; the pool itself stays in host memory as fp16."""

    def __init__(self, pipe: FluxPipeline, max_len: int, cap: int, workers: int = 0,
                 device: torch.device | str = "cpu"):
        self.pipe = pipe
        self.max_len = max_len
        self.cap = cap
        self.device = torch.device(device)
        self.buckets: dict[tuple, dict[str, list]] = {}
        self.n = 0
        self.generated = 0
        self._empty = None
        self._procs = None
        self._pending = None
        if workers > 0:
            import multiprocessing

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._procs = multiprocessing.get_context("spawn").Pool(workers)

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
        the equality."""
        ids = self.pipe.tokenizer_2(prompts, padding="max_length", max_length=self.max_len, truncation=True,
                                    return_tensors="pt").input_ids.to(self.device)
        out = self.pipe.text_encoder_2(ids, output_hidden_states=False)
        return out.last_hidden_state.to("cpu", torch.float16), out.pooler_output.to("cpu", torch.float16)

    @torch.no_grad()
    def check_text_encoding(self, prompts: list[str]):
        pe, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                max_sequence_length=self.max_len)
        pe1, pooled1 = self.encode_text(prompts)
        assert torch.equal(pe.to("cpu", torch.float16), pe1) and torch.equal(pooled.to("cpu", torch.float16), pooled1), \
            "one-pass text encoding differs from FluxPipeline.encode_prompt"

    def empty(self):
        if self._empty is None:
            self._empty = self.encode_text([bp.NEGATIVE_PROMPT])
        return self._empty

    @torch.no_grad()
    def encode_images(self, imgs):
        vae = self.pipe.vae
        x = torch.stack([to_tensor(i) for i in imgs])
        z = analytic_latents(x)  # == vae.encode(x).latent_dist.mode() (analytic encoder)
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        return z.to(torch.float16)

    def _jobs(self, n: int, rng: random.Random, edit_frac: float) -> list[tuple]:
        per_aspect = max(1, n // (len(world.ASPECTS) * 2))
        jobs = []
        for asp in world.ASPECTS:
            for kind in ("t2i", "edit"):
                k = int(round(per_aspect * 2 * (edit_frac if kind == "edit" else 1 - edit_frac)))
                if k:
                    jobs.append((rng.getrandbits(63), kind, asp, k, self.max_len))
        return jobs

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
        for kind, asp, caps, tg, ctx in chunks:
            self._add(kind, asp, caps, tg, ctx)
        self.n = sum(len(b["z"]) for b in self.buckets.values())

    def _add(self, kind, asp, caps, tg, ctx):
        pe, pooled = self.encode_text(caps)
        zt = self.encode_images(tg)
        zc = self.encode_images(ctx) if ctx else None
        b = self.buckets.setdefault((kind, asp), {"pe": [], "pooled": [], "z": [], "ctx": []})
        for i in range(len(caps)):
            b["pe"].append(pe[i]); b["pooled"].append(pooled[i]); b["z"].append(zt[i])
            b["ctx"].append(zc[i] if zc is not None else None)
        overflow = len(b["z"]) - self.cap // (len(world.ASPECTS) * 2)
        if overflow > 0:
            for key in b:
                del b[key][:overflow]
        self.generated += len(caps)

    def batch(self, rng: random.Random, bs: int, edit_frac: float):
        kind = "edit" if rng.random() < edit_frac else "t2i"
        keys = [k for k in self.buckets if k[0] == kind and self.buckets[k]["z"]]
        key = rng.choice(keys)
        b = self.buckets[key]
        idx = [rng.randrange(len(b["z"])) for _ in range(bs)]
        pe = torch.stack([b["pe"][i] for i in idx]).float()
        pooled = torch.stack([b["pooled"][i] for i in idx]).float()
        z = torch.stack([b["z"][i] for i in idx]).float()
        ctx = torch.stack([b["ctx"][i] for i in idx]).float() if kind == "edit" else None
        return kind, pe, pooled, z, ctx


# ---------------------------------------------------------------------------
# Transformer step (mirrors FluxPipeline / FluxKontextPipeline exactly)
# ---------------------------------------------------------------------------
def flow_loss(transformer, pe, pooled, z, ctx, gen: torch.Generator, train_shift: float = 1.0):
    B, C, h, w = z.shape
    P = FluxPipeline
    x0 = P._pack_latents(z, B, C, h, w)
    ids = P._prepare_latent_image_ids(B, h // 2, w // 2, z.device, z.dtype)
    N = x0.shape[1]
    # random draws come from the (CPU) generator, so a run's noise does not depend on the device
    noise = torch.randn(x0.shape, generator=gen).to(z.device)
    u = torch.rand(B, generator=gen)
    ln = torch.sigmoid(torch.randn(B, generator=gen) * 1.0)
    s = torch.where(u < 0.8, ln, torch.rand(B, generator=gen))
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
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=z.device.type == "cuda"):
        out = transformer(hidden_states=hidden, timestep=s, guidance=None, pooled_projections=pooled,
                          encoder_hidden_states=pe, txt_ids=txt_ids, img_ids=ids, return_dict=False)[0]
    out = out[:, :N].float()
    return F.mse_loss(out, noise - x0)


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
    ap.add_argument("--decoder-only", action="store_true",
                    help="only train the VAE decoder (writes <run>/decoder.pt); can run in parallel")
    ap.add_argument("--decoder-from", default=None,
                    help="use a decoder state dict trained separately (skips the decoder stage)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--heads", type=int, default=bp.TRANSFORMER_CFG["num_attention_heads"],
                    help="attention heads of 32 dims (width = 32 x heads)")
    ap.add_argument("--double", type=int, default=bp.TRANSFORMER_CFG["num_layers"], help="double-stream blocks")
    ap.add_argument("--single", type=int, default=bp.TRANSFORMER_CFG["num_single_layers"], help="single-stream blocks")
    ap.add_argument("--init", default="default", choices=["default", "adaln-zero"],
                    help="transformer initialisation (see build_pipeline.make_transformer)")
    ap.add_argument("--edit-frac", type=float, default=0.3)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--pool", type=int, default=60000)
    ap.add_argument("--refresh-every", type=int, default=40, help="steps between pool refreshes")
    ap.add_argument("--refresh-n", type=int, default=256)
    ap.add_argument("--init-pool", type=int, default=2500)
    ap.add_argument("--ckpt-min", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast); the result is the same pipeline")
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
    else:
        args.max_steps = None
    run = Path(args.run or f"training/runs/{'smoke' if args.smoke else 'mini-s%d' % args.seed}")
    run.mkdir(parents=True, exist_ok=True)
    log(f"args {vars(args)}")
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    ckpt_path = run / "ckpt.pt"

    device = torch.device(args.device)
    enc = bp.load_text_encoder().to(device)
    state = None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        log(f"resuming from step {state['step']} (elapsed {state['elapsed'] / 60:.1f} min)")

    vae = bp.make_vae()
    prev_elapsed = 0.0
    if state is not None:
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
        train_decoder(vae, args.dec_minutes, random.Random(args.seed + 17), batch=2 if args.smoke else 4,
                      max_steps=2 if args.smoke else None, save_to=run / "decoder.pt")
        log("decoder done")
        return
    vae.eval().requires_grad_(False)

    if state is not None and "args" in state:  # a resumed run keeps its architecture
        for k in ("heads", "double", "single"):
            if k in state["args"]:
                setattr(args, k, state["args"][k])
    transformer = bp.make_transformer(init=args.init, num_attention_heads=args.heads, num_layers=args.double,
                                      num_single_layers=args.single)
    pipe = bp.assemble(transformer, vae, text_encoder=enc)
    transformer.to(device)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    step = 0
    if state is not None and "transformer" in state:
        transformer.load_state_dict(state["transformer"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    nparams = sum(p.numel() for p in transformer.parameters())
    log(f"transformer params {nparams / 1e6:.2f}M")

    data_rng = random.Random(args.seed * 1000003 + step)
    gen = torch.Generator().manual_seed(args.seed * 7919 + step)
    pool = Pool(pipe, bp.MAX_SEQ, args.pool, workers=args.data_workers, device=device)
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

    def elapsed():
        return prev_elapsed + (time.time() - seg_start)

    def save_ckpt(final=False):
        torch.save({"step": step, "elapsed": elapsed(), "transformer": transformer.state_dict(),
                    "ema": ema.state_dict(), "opt": opt.state_dict(), "vae": vae.state_dict(),
                    "vae_shift": vae.config.shift_factor, "vae_scale": vae.config.scaling_factor,
                    "args": vars(args)}, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        exp = run / "export"
        bp.save_pipeline(ema, vae, exp, {"train_step": step, "train_minutes": round(elapsed() / 60, 1),
                                         "seed": args.seed})
        log(f"checkpoint step {step} -> {ckpt_path}, export -> {exp}")
        if final:
            bp.save_pipeline(ema, vae, args.out, {"train_step": step, "train_minutes": round(elapsed() / 60, 1),
                                                  "seed": args.seed})
            log(f"final pipeline -> {args.out}")

    transformer.train()
    while True:
        if args.max_steps is not None and step >= args.max_steps:
            break
        frac = elapsed() / budget if budget > 0 else 1.0
        if args.max_steps is None and frac >= 1.0:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        kind, pe, pooled, z, ctx = pool.batch(data_rng, args.batch, args.edit_frac)
        if args.cfg_drop > 0:
            # unconditional samples for classifier-free guidance: empty prompt; for edits the
            # unconditional target is the unchanged source image (identity edit)
            drop = torch.rand(pe.shape[0], generator=gen) < args.cfg_drop
            if drop.any():
                pe[drop] = empty_pe[0].float()
                pooled[drop] = empty_pooled[0].float()
                if ctx is not None:
                    z[drop] = ctx[drop]
        pe, pooled, z = pe.to(device), pooled.to(device), z.to(device)
        ctx = ctx.to(device) if ctx is not None else None
        loss = flow_loss(transformer, pe, pooled, z, ctx, gen, args.train_shift)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):  # an unattended run must not die (or poison the EMA) on one bad batch
            log(f"step {step}: non-finite loss, batch skipped")
            continue
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        if not torch.isfinite(gnorm):
            log(f"step {step}: non-finite gradient, batch skipped")
            continue
        opt.step()
        step += 1
        n_seen += z.shape[0]
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe_, p in zip(ema.parameters(), transformer.parameters()):
                pe_.lerp_(p, 1 - d)
        losses[kind].append(loss.item())
        if step % args.refresh_every == 0:
            pool.generate(args.refresh_n, data_rng, args.edit_frac)
        if step % 25 == 0 or args.smoke:
            dt = time.time() - t_log
            lt = np.mean(losses["t2i"][-50:]) if losses["t2i"] else float("nan")
            le = np.mean(losses["edit"][-50:]) if losses["edit"] else float("nan")
            log(f"step {step} loss_t2i {lt:.4f} loss_edit {le:.4f} lr {lr:.2e} {n_seen / max(dt, 1e-6):.1f} samp/s "
                f"pool {pool.n} gen {pool.generated} elapsed {elapsed() / 60:.1f}m")
            n_seen, t_log = 0, time.time()
        if time.time() - last_ckpt > args.ckpt_min * 60:
            save_ckpt()
            last_ckpt = time.time()
    pool.close()
    if args.decoder_from:
        sd = torch.load(args.decoder_from, map_location="cpu")
        vae.load_state_dict({k: v for k, v in sd.items()})
        log(f"decoder loaded from {args.decoder_from}")
    elif args.dec_minutes > 0:
        train_decoder(vae, args.dec_minutes, random.Random(args.seed + 17), batch=2 if args.smoke else 4,
                      max_steps=2 if args.smoke else None)
    save_ckpt(final=True)
    (run / "DONE").write_text(json.dumps({"step": step, "elapsed_min": elapsed() / 60}))
    log("done")


if __name__ == "__main__":
    main()
