"""Detector + scorer for the darkroom-mini world, and the model evaluation CLI.

    from training.evaluate import detect, score, score_edit, spec_for_prompt
    s = score(image, spec)            # {"correct": bool, "checks": {...}, ...}

    python -m training.evaluate --model models/darkroom-mini --out bench/results/mini-eval.json

Detector: segment saturated pixels (all object colours are saturated, all
background colours are not), classify colour by hue, split connected components
per colour, classify shape by geometry (hole fraction, extent, solidity,
centroid/mass distribution) with a nearest-centroid model fitted on the
generator's own renders, read positions from centroids.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import random
import re
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from training import world

# ---------------------------------------------------------------------------
# Pixel classification
# ---------------------------------------------------------------------------
_PAL_NAMES = list(world.COLOURS)


def _rgb_to_hsv(a: np.ndarray):
    a = a.astype(np.float32) / 255.0
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mx = a.max(-1)
    mn = a.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-6), 0)
    h = np.zeros_like(mx)
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6, h)
    h = np.where(mx == g, (b - r) / dd + 2, h)
    h = np.where(mx == b, (r - g) / dd + 4, h)
    h = h * 60.0
    return h, s, mx


_PAL_HUE = _rgb_to_hsv(np.array([world.COLOURS[c] for c in _PAL_NAMES], np.uint8))[0]

SAT_T = 0.42
VAL_T = 0.30


def colour_labels(arr: np.ndarray) -> np.ndarray:
    """Per-pixel object colour index (0..7) or -1 for background."""
    h, s, v = _rgb_to_hsv(arr)
    obj = (s > SAT_T) & (v > VAL_T)
    dh = np.abs(h[..., None] - _PAL_HUE[None, None, :])
    dh = np.minimum(dh, 360 - dh)
    lab = dh.argmin(-1)
    return np.where(obj, lab, -1)


# ---------------------------------------------------------------------------
# Shape features + classifier
# ---------------------------------------------------------------------------
def _hull_area(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    pts = np.concatenate([np.stack([xs, ys], 1) + o for o in ([0, 0], [1, 0], [0, 1], [1, 1])]).astype(np.float64)
    pts = np.unique(pts, axis=0)
    if len(pts) < 3:
        return float(mask.sum())
    # monotone chain
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(tuple(p))
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(tuple(p))
    hull = np.array(lower[:-1] + upper[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def shape_features(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = mask[y0:y1, x0:x1]
    filled = ndimage.binary_fill_holes(m)
    A = float(m.sum())
    Af = float(filled.sum())
    h, w = m.shape
    hole = (Af - A) / Af
    extent = Af / (h * w)
    solidity = Af / max(_hull_area(filled), 1.0)
    fy, fx = np.nonzero(filled)
    cyr = (fy.mean() + 0.5) / h
    top = filled[: h // 2].sum() / Af
    # width profile: fraction of width filled in the top row band vs bottom band
    rows = filled.sum(1) / w
    k = max(1, h // 5)
    topw = rows[:k].mean()
    botw = rows[-k:].mean()
    aspect = w / h
    return np.array([hole * 3, extent, solidity, cyr, top, topw, botw, aspect], np.float64)


@lru_cache(maxsize=1)
def _shape_model():
    rng = random.Random(99)
    feats = {s: [] for s in world.SHAPES}
    for i in range(40):
        for shape in world.SHAPES:
            asp = rng.choice(list(world.ASPECTS))
            W, H = world.ASPECTS[asp]
            size = rng.choice(world.SIZES)
            scale = rng.choice([1, 1, 2])
            sc = world.Scene(asp, ("plain", "white"), [world.Obj(shape, rng.choice(_PAL_NAMES), size, 0.5, 0.5)])
            img = world.render(sc, (W * scale, H * scale))
            lab = colour_labels(np.asarray(img))
            feats[shape].append(shape_features(lab >= 0))
    mu = np.stack([np.mean(feats[s], 0) for s in world.SHAPES])
    allf = np.concatenate([np.array(feats[s]) - mu[k] for k, s in enumerate(world.SHAPES)])
    sd = allf.std(0) + 0.03
    return mu, sd


def classify_shape(mask: np.ndarray) -> str:
    mu, sd = _shape_model()
    f = shape_features(mask)
    d = (((f[None] - mu) / sd) ** 2).sum(1)
    return world.SHAPES[int(d.argmin())]


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------
def detect(image: Image.Image) -> dict:
    arr = np.asarray(image.convert("RGB"))
    H, W = arr.shape[:2]
    lab = colour_labels(arr)
    # reference small-object radius at this resolution (aspect from the image)
    asp = min(world.ASPECTS, key=lambda a: abs(math.log(world.ASPECTS[a][0] / world.ASPECTS[a][1]) - math.log(W / H)))
    nW, nH = world.ASPECTS[asp]
    r_small = world.object_radius_px("small", nW, nH) * (W / nW)
    min_area = 0.25 * math.pi * r_small ** 2
    objs = []
    for ci, cname in enumerate(_PAL_NAMES):
        m = lab == ci
        if m.sum() < min_area:
            continue
        m = ndimage.binary_opening(m, iterations=1) if r_small > 6 else m
        cc, n = ndimage.label(m, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            mk = cc == k
            a = int(mk.sum())
            if a < min_area:
                continue
            ys, xs = np.nonzero(mk)
            objs.append({"colour": cname, "shape": classify_shape(mk), "cx": float(xs.mean() + 0.5) / W,
                         "cy": float(ys.mean() + 0.5) / H, "area": a / (W * H),
                         "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
    # background: pixels far from any object
    objmask = ndimage.binary_dilation(lab >= 0, iterations=2)
    bgpix = ~objmask
    bg = _read_background(arr, bgpix)
    return {"objects": objs, "background": bg, "size": [W, H]}


def _nearest_bg(c):
    names = list(world.BG_COLOURS)
    d = [np.linalg.norm(np.asarray(world.BG_COLOURS[n], np.float32) - c) for n in names]
    k = int(np.argmin(d))
    return names[k], float(d[k])


def _read_background(arr, bgpix):
    H, W = arr.shape[:2]
    f = arr.astype(np.float32)

    def band(sl):
        m = np.zeros_like(bgpix)
        m[sl] = True
        m &= bgpix
        if m.sum() < 4:
            return None
        return np.median(f[m], 0)

    q = 6
    left, right = band((slice(None), slice(0, W // q))), band((slice(None), slice(W - W // q, W)))
    top, bot = band((slice(0, H // q), slice(None))), band((slice(H - H // q, H), slice(None)))
    allc = np.median(f[bgpix], 0) if bgpix.sum() else np.zeros(3)
    res = {"median": allc.tolist(), "plain": _nearest_bg(allc)[0]}
    dh = np.linalg.norm(left - right) if left is not None and right is not None else 0
    dv = np.linalg.norm(top - bot) if top is not None and bot is not None else 0
    a, b = (left, right) if dh >= dv else (top, bot)
    if max(dh, dv) > 18 and a is not None and b is not None and _nearest_bg(a)[0] != _nearest_bg(b)[0]:
        res["gradient"] = [_nearest_bg(a)[0], _nearest_bg(b)[0], "h" if dh >= dv else "v"]
    else:
        res["gradient"] = None
    return res


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------
def _in_position(o, pos):
    x, y = o["cx"], o["cy"]
    return {"left": x < 0.4, "right": x > 0.6, "top": y < 0.4, "bottom": y > 0.6,
            "center": abs(x - 0.5) < 0.17 and abs(y - 0.5) < 0.17}[pos]


def _relation(a, b, rel, W, H):
    dx = (b["cx"] - a["cx"]) * W
    dy = (b["cy"] - a["cy"]) * H
    if rel == "left_of":
        return dx > 0 and dx > 0.6 * abs(dy)
    if rel == "right_of":
        return dx < 0 and -dx > 0.6 * abs(dy)
    if rel == "above":
        return dy > 0 and dy > 0.6 * abs(dx)
    if rel == "below":
        return dy < 0 and -dy > 0.6 * abs(dx)
    raise ValueError(rel)


def _bg_ok(det_bg, want) -> bool:
    if want is None:
        return True
    if want[0] == "plain":
        return det_bg["gradient"] is None and det_bg["plain"] == want[1]
    g = det_bg["gradient"]
    return g is not None and g[0] == want[1] and g[1] == want[2]


def score(image: Image.Image, spec: dict, det: dict | None = None, check_background: bool | None = None) -> dict:
    """Score an image against a prompt spec. Returns {"correct", "checks", "category", "detected"}."""
    det = det or detect(image)
    objs = det["objects"]
    W, H = det["size"]
    checks = {}
    cat = spec.get("category", "single")
    groups = spec["groups"]
    if cat == "colour":
        want = sorted(c for g in groups for c in [g["colour"]] * g["count"])
        got = sorted(o["colour"] for o in objs)
        checks["colours"] = want == got
    else:
        matched = []
        for gi, g in enumerate(groups):
            ms = [o for o in objs if o["shape"] == g["shape"] and o["colour"] == g["colour"]]
            checks[f"group{gi}_count"] = len(ms) == g["count"]
            matched.append(ms)
            if g.get("position"):
                checks[f"group{gi}_position"] = bool(ms) and all(_in_position(o, g["position"]) for o in ms)
        if spec.get("exact", True):
            checks["total"] = len(objs) == sum(g["count"] for g in groups)
        for (i, rel, j) in spec.get("relations", []):
            ok = bool(matched[i]) and bool(matched[j]) and _relation(matched[i][0], matched[j][0], rel, W, H)
            checks[f"rel{i}{rel}{j}"] = ok
        if spec.get("moved"):
            mv = spec["moved"]
            ms = [o for o in objs if o["shape"] == mv["shape"] and o["colour"] == mv["colour"]]
            checks["moved_position"] = bool(ms) and _in_position(ms[0], mv["position"])
    cb = check_background if check_background is not None else (spec.get("edit") == "background")
    if cb and spec.get("background"):
        checks["background"] = _bg_ok(det["background"], spec["background"])
    return {"correct": all(checks.values()), "checks": checks, "category": cat, "detected": det}


def psnr_untouched(out: Image.Image, src: Image.Image, tgt: Image.Image, margin: int = 2) -> float:
    """PSNR between output and source over pixels the edit must not change
    (where source and target renders agree), eroded by ``margin`` px."""
    o = np.asarray(out.convert("RGB"), np.float32)
    s = np.asarray(src.convert("RGB"), np.float32)
    t = np.asarray(tgt.convert("RGB"), np.float32)
    if o.shape != s.shape:
        o = np.asarray(out.convert("RGB").resize(src.size, Image.LANCZOS), np.float32)
    changed = np.abs(s - t).max(-1) > 3
    changed = ndimage.binary_dilation(changed, iterations=margin)
    keep = ~changed
    if keep.sum() < 16:
        return float("nan")
    mse = ((o - s) ** 2)[keep].mean()
    return float(10 * math.log10(255.0 ** 2 / max(mse, 1e-10)))


def score_edit(out: Image.Image, src: Image.Image, tgt: Image.Image, spec: dict) -> dict:
    r = score(out, spec)
    r["psnr"] = psnr_untouched(out, src, tgt)
    return r


# ---------------------------------------------------------------------------
# Prompt -> spec
# ---------------------------------------------------------------------------
def _alts(table):
    out = []
    for key, v in table.items():
        for mode in ("train", "para"):
            for wd in v[mode]:
                out.append((wd, key))
    return sorted(out, key=lambda t: -len(t[0]))


_COL = _alts(world.COLOUR_WORDS)
_SHP = []
for _k, _v in world.SHAPE_WORDS.items():
    for _m in ("train", "para"):
        for _wd in _v[_m]:
            _SHP.append((_wd, _k, 1))
            _SHP.append((world.SHAPE_PLURAL.get(_wd, _wd + "s"), _k, 2))
_SHP.sort(key=lambda t: -len(t[0]))
_NUM = sorted([(wd, n) for n, v in world.NUM_WORDS.items() for m in ("train", "para") for wd in v[m]] + [("an", 1)],
              key=lambda t: -len(t[0]))
_SIZ = _alts(world.SIZE_WORDS)
_POS = _alts(world.POS_WORDS)
_REL = _alts(world.REL_WORDS)
_BGW = _alts(world.BG_WORDS)

_CACHE: dict[str, dict] = {}


def _rx(items):
    return "|".join(re.escape(i[0]) for i in items)


_OBJ_RE = re.compile(
    rf"(?:\b(?P<num>{_rx(_NUM)})\s+)?(?:(?P<size>{_rx(_SIZ)})\s+)?(?P<col>{_rx(_COL)})\s+(?P<shape>{_rx(_SHP)})\b")


def parse_prompt(prompt: str) -> dict:
    """Best-effort keyword parser for prompts in this world's vocabulary."""
    p = prompt.lower().strip()
    cmap, smap = dict(_COL), {w: (k, n) for w, k, n in _SHP}
    nmap, zmap = dict(_NUM), dict(_SIZ)
    groups, spans = [], []
    for m in _OBJ_RE.finditer(p):
        shape, plural = smap[m.group("shape")]
        n = nmap.get(m.group("num"), 1) if m.group("num") else (2 if plural == 2 else 1)
        groups.append({"shape": shape, "colour": cmap[m.group("col")],
                       "size": zmap.get(m.group("size")) if m.group("size") else None,
                       "count": n, "position": None})
        spans.append(m.span())
    rels = []
    if len(groups) == 2:
        between = p[spans[0][1]:spans[1][0]]
        for wd, key in _REL:
            if re.search(rf"\b{re.escape(wd)}\b", between):
                rels = [[0, key, 1]]
                break
    rest = p
    for s, e in reversed(spans):
        rest = rest[:s] + " | " + rest[e:]
    if len(groups) == 1:
        for wd, key in _POS:
            if wd in rest:
                groups[0]["position"] = key
                break
    bg = None
    tail = p[spans[-1][1]:] if spans else p
    found = []
    for wd, key in _BGW:
        for mm in re.finditer(rf"\b{re.escape(wd)}\b", tail):
            if not any(a <= mm.start() < b for a, b, _ in found):
                found.append((mm.start(), mm.end(), key))
    found.sort()
    if found and re.search(r"background|backdrop|gradient|canvas|field|blend|fading|\bon\b", tail):
        if len(found) >= 2 and re.search(r"gradient|blend|fading", tail):
            bg = ["gradient", found[0][2], found[1][2]]
        else:
            bg = ["plain", found[0][2]]
    if any(g["count"] > 1 for g in groups):
        cat = "counting"
    elif rels or any(g["position"] for g in groups):
        cat = "position"
    elif len(groups) == 2 and groups[0]["colour"] != groups[1]["colour"] and groups[0]["shape"] != groups[1]["shape"]:
        cat = "binding"
    elif len(groups) >= 2:
        cat = "two"
    else:
        cat = "single"
    return {"category": cat, "groups": groups, "relations": rels, "exact": True, "background": bg}


def spec_for_prompt(prompt: str) -> dict:
    """Spec for a prompt: exact spec for evaluation-set prompts, else parsed."""
    if not _CACHE:
        sets = world.eval_sets()
        for k in ("heldout", "paraphrase"):
            for cap, spec, _ in sets[k]:
                _CACHE.setdefault(cap, spec)
    return _CACHE.get(prompt) or parse_prompt(prompt)


# ---------------------------------------------------------------------------
# Model evaluation
# ---------------------------------------------------------------------------
def generate(pipe, prompt, aspect, seed=0, steps=None, cfg=None):
    import torch

    from training import build_pipeline as bp

    from darkroom.engines.sampling import job_generators

    W, H = world.ASPECTS[aspect]
    kw = {}
    cfg = bp.DEFAULT_TRUE_CFG if cfg is None else cfg
    if cfg and cfg > 1:
        kw = dict(negative_prompt=bp.NEGATIVE_PROMPT, true_cfg_scale=cfg)
    gen = torch.Generator().manual_seed(seed)
    with job_generators(pipe, [gen]):  # a stochastic scheduler's per-step noise from the same generator
        return pipe(prompt=prompt, height=H, width=W, num_inference_steps=steps or bp.DEFAULT_STEPS,
                    max_sequence_length=bp.MAX_SEQ, generator=gen, **kw).images[0]


def edit(kpipe, instruction, src_img, seed=0, steps=None, cfg=None):
    import torch

    from training import build_pipeline as bp

    from darkroom.engines.sampling import job_generators

    W, H = src_img.size
    kw = {}
    cfg = bp.DEFAULT_EDIT_CFG if cfg is None else cfg
    if cfg and cfg > 1:
        kw = dict(negative_prompt=bp.NEGATIVE_PROMPT, true_cfg_scale=cfg)
    gen = torch.Generator().manual_seed(seed)
    with job_generators(kpipe, [gen]):
        return kpipe(image=src_img, prompt=instruction, height=H, width=W, max_area=W * H, _auto_resize=False,
                     num_inference_steps=steps or bp.DEFAULT_STEPS, max_sequence_length=bp.MAX_SEQ,
                     generator=gen, **kw).images[0]


SPLITS = ("heldout", "paraphrase", "edits")


def evaluate_model(model_dir, n_per_cat=25, n_edits=20, steps=None, cfg=None, edit_cfg=None, seed=0,
                   save_dir=None, sets=None, log=print, decoder=None, pipe=None, scheduler: dict | None = None,
                   splits: tuple[str, ...] = SPLITS):
    """Score a model on the evaluation sets. ``splits``: which of heldout, paraphrase and edits to run (an A/B
    of an edit-only change can run more edits in the same time); the prompts of a split do not depend on
    which others run."""
    import torch
    from diffusers import FluxKontextPipeline

    from training import build_pipeline as bp

    pipe = pipe or bp.load_pipeline(model_dir)
    if scheduler:  # sampler A/Bs: override the saved scheduler config (e.g. stochastic_sampling, shift)
        pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, **scheduler})
    if decoder:
        pipe.vae.load_state_dict(torch.load(decoder, map_location="cpu"))
    kpipe = FluxKontextPipeline.from_pipe(pipe)
    kpipe.set_progress_bar_config(disable=True)
    sets = sets or world.eval_sets(n_per_cat=n_per_cat, n_edits_per_kind=n_edits)
    res: dict = {"steps": steps or bp.DEFAULT_STEPS, "cfg": cfg, "edit_cfg": edit_cfg,
                 "scheduler": dict(pipe.scheduler.config)}
    t0 = time.time()
    for split in (x for x in ("heldout", "paraphrase") if x in splits):
        per, partial = {}, []
        for i, (cap, spec, scene) in enumerate(sets[split]):
            img = generate(pipe, cap, scene.aspect, seed=seed + i, steps=steps, cfg=cfg)
            r = score(img, spec)
            per.setdefault(spec["category"], []).append(r["correct"])
            partial.append(float(np.mean(list(r["checks"].values()))) if r["checks"] else 0.0)
            if save_dir and i % 5 == 0:
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                img.save(Path(save_dir) / f"{split}_{i:03d}_{int(r['correct'])}.png")
        res[split] = {"overall": float(np.mean([x for v in per.values() for x in v])),
                      "per_category": {k: float(np.mean(v)) for k, v in per.items()},
                      "checks_passed": float(np.mean(partial)),
                      "n": sum(len(v) for v in per.values())}
        log(f"{split}: {json.dumps(res[split])} ({time.time() - t0:.0f}s)")
    if "edits" not in splits:
        return res
    per, ps, partial = {}, [], []
    for i, (ins, src, tgt, spec) in enumerate(sets["edits"]):
        s_img, t_img = world.render_pair(src, tgt)
        out = edit(kpipe, ins, s_img, seed=seed + i, steps=steps, cfg=edit_cfg)
        r = score_edit(out, s_img, t_img, spec)
        per.setdefault(spec["edit"], []).append(r["correct"])
        partial.append(float(np.mean(list(r["checks"].values()))) if r["checks"] else 0.0)
        if not math.isnan(r["psnr"]):
            ps.append(r["psnr"])
        if save_dir and i % 5 == 0:
            out.save(Path(save_dir) / f"edit_{i:03d}_{spec['edit']}_{int(r['correct'])}.png")
    res["edits"] = {"correct": float(np.mean([x for v in per.values() for x in v])),
                    "per_kind": {k: float(np.mean(v)) for k, v in per.items()},
                    "psnr_untouched_mean": float(np.mean(ps)), "psnr_untouched_median": float(np.median(ps)),
                    "checks_passed": float(np.mean(partial)),
                    "n": sum(len(v) for v in per.values())}
    log(f"edits: {json.dumps(res['edits'])} ({time.time() - t0:.0f}s)")
    return res


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/darkroom-mini")
    ap.add_argument("--n", type=int, default=25, help="prompts per category")
    ap.add_argument("--n-edits", type=int, default=20, help="edits per kind")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--edit-cfg", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-dir", default=None)
    ap.add_argument("--decoder", default=None, help="VAE state dict to swap in (decoder trained separately)")
    ap.add_argument("--shift", type=float, default=None, help="override the scheduler's shift")
    ap.add_argument("--stochastic", type=int, choices=[0, 1], default=None,
                    help="override the scheduler's stochastic_sampling")
    ap.add_argument("--splits", default=",".join(SPLITS), help="comma-separated: heldout, paraphrase, edits")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    splits = tuple(x.strip() for x in args.splits.split(",") if x.strip())
    if not splits or any(x not in SPLITS for x in splits):
        ap.error(f"--splits: choose from {', '.join(SPLITS)} (got {args.splits!r})")
    torch.set_num_threads(args.threads)
    scheduler = {}
    if args.shift is not None:
        scheduler["shift"] = args.shift
    if args.stochastic is not None:
        scheduler["stochastic_sampling"] = bool(args.stochastic)
    res = evaluate_model(args.model, args.n, args.n_edits, args.steps, args.cfg, args.edit_cfg, save_dir=args.save_dir,
                         decoder=args.decoder, scheduler=scheduler, splits=splits)
    res["model"] = args.model
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
