"""Training data: chunks of samples rendered in this process or in worker processes (render,
analytic latents, labels), and the rolling pool of encoded samples the training steps draw from."""
from __future__ import annotations

import functools
import os
import random

import numpy as np
import torch
from diffusers import FluxPipeline

from training import build_pipeline as bp
from training import world
from training.analytic_vae import analytic_latents
from training.train.common import to_tensor


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
