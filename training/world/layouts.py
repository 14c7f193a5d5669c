"""Where objects go: regions of the position words, random placement (runs 1-5), canonical slots
(one layout per prompt, the default from run 6 on) and layouts read from the sampling noise
(``--coupling noise``, tried and not adopted).
"""
from __future__ import annotations

import math
import random

import numpy as np

from training.world.scenes import object_radius_px
from training.world.vocabulary import COLOURS


def _pos_region(pos: str | None, W: int, H: int, r: float):
    """Return (xlo, xhi, ylo, yhi) range of centre pixels for a position word."""
    pad = r + 2
    if pos is None:
        return pad, W - pad, pad, H - pad
    if pos == "left":
        return pad, max(pad, 0.28 * W), 0.3 * H, 0.7 * H
    if pos == "right":
        return min(W - pad, 0.72 * W), W - pad, 0.3 * H, 0.7 * H
    if pos == "top":
        return 0.3 * W, 0.7 * W, pad, max(pad, 0.28 * H)
    if pos == "bottom":
        return 0.3 * W, 0.7 * W, min(H - pad, 0.72 * H), H - pad
    if pos == "center":
        return 0.42 * W, 0.58 * W, 0.42 * H, 0.58 * H
    raise ValueError(pos)


def _clamp_region(reg, W, H, r):
    pad = r + 1
    xlo, xhi, ylo, yhi = reg
    xlo, ylo = max(xlo, pad), max(ylo, pad)
    xhi, yhi = min(xhi, W - pad), min(yhi, H - pad)
    if xhi < xlo:
        xlo = xhi = W / 2
    if yhi < ylo:
        ylo = yhi = H / 2
    return xlo, xhi, ylo, yhi


def _free(x, y, r, placed, gap):
    for (px, py, pr) in placed:
        if math.hypot(x - px, y - py) < r + pr + gap:
            return False
    return True


def _object_gap(W: int, H: int) -> float:
    """The clearance objects keep from each other (6 % of the short side + 2 px): in placed scenes, and
    for a moved or added object."""
    return 0.06 * min(W, H) + 2


def place(items: list[dict], relations: list, W: int, H: int, rng: random.Random, tries: int = 400):
    """items: [{"size", "position"}]; relations: [(i, rel, j)]. Returns list of (cx, cy) px or None."""
    radii = [object_radius_px(it["size"], W, H) for it in items]
    gap = _object_gap(W, H)
    for _ in range(tries):
        placed = []
        ok = True
        for k, it in enumerate(items):
            r = radii[k]
            rels = [(i, rel, j) for (i, rel, j) in relations if i == k and j < k]
            found = False
            for _t in range(60):
                if rels:
                    i, rel, j = rels[0]
                    jx, jy, jr = placed[j]
                    sep = r + jr + gap
                    if rel == "left_of":
                        x = jx - sep - rng.uniform(0, 0.25 * W); y = jy + rng.uniform(-0.35, 0.35) * (jx - x)
                    elif rel == "right_of":
                        x = jx + sep + rng.uniform(0, 0.25 * W); y = jy + rng.uniform(-0.35, 0.35) * (x - jx)
                    elif rel == "above":
                        y = jy - sep - rng.uniform(0, 0.25 * H); x = jx + rng.uniform(-0.35, 0.35) * (jy - y)
                    else:
                        y = jy + sep + rng.uniform(0, 0.25 * H); x = jx + rng.uniform(-0.35, 0.35) * (y - jy)
                    if not (r + 1 <= x <= W - r - 1 and r + 1 <= y <= H - r - 1):
                        continue
                else:
                    xlo, xhi, ylo, yhi = _clamp_region(_pos_region(it.get("position"), W, H, r), W, H, r)
                    x = rng.uniform(xlo, xhi); y = rng.uniform(ylo, yhi)
                if _free(x, y, r, placed, gap):
                    placed.append((x, y, r)); found = True
                    break
            if not found:
                ok = False
                break
        if ok:
            return [(p[0], p[1]) for p in placed]
    return None


# --------------------------------------------------------------------------
# Canonical layouts (darkroom-mini's default training layout)
# --------------------------------------------------------------------------
CANON_JITTER = 0.02  # of min(W, H): the seed still moves objects a little


CANONICAL = ("canonical", "spread")  # the layouts with one fixed composition per prompt


def _canon_gap(W: int, H: int) -> float:
    return 0.02 * min(W, H) + 1


def _min_gap(pts, radii) -> float:
    """The smallest edge-to-edge distance between two of the objects (inf for one)."""
    return min((math.hypot(x - x2, y - y2) - r - r2 for k, ((x, y), r) in enumerate(zip(pts, radii))
                for (x2, y2), r2 in zip(pts[:k], radii[:k])), default=math.inf)


def _clamp_inside(pts, radii, W, H):
    """Each centre moved just far enough that its object lies inside the image."""
    return [(min(max(x, r + 1), W - r - 1), min(max(y, r + 1), H - r - 1)) for (x, y), r in zip(pts, radii)]


def _fits(pts, radii, W, H) -> bool:
    inside = all(r + 1 <= x <= W - r - 1 and r + 1 <= y <= H - r - 1 for (x, y), r in zip(pts, radii))
    return inside and _min_gap(pts, radii) >= _canon_gap(W, H)


def region_centre(pos: str | None, W: int, H: int, r: float) -> tuple[float, float]:
    """The canonical spot for a position word (None: the image centre)."""
    xlo, xhi, ylo, yhi = _clamp_region(_pos_region(pos, W, H, r), W, H, r)
    return (xlo + xhi) / 2, (ylo + yhi) / 2


def _arrangements(n: int, W: int, H: int, axis: str | None = None):
    """Candidate slot lists (fractions of W, H) for n objects in reading order: a row along the
    long side (or along ``axis``), then two rows (columns) with the last one centred."""
    along_x = (W >= H) if axis is None else axis == "x"
    row = [((k + 0.5) / n, 0.5) for k in range(n)]
    yield row if along_x else [(b, a) for (a, b) in row]
    if n >= 3 and axis is None:
        first = (n + 1) // 2
        grid = [((k + 0.5) / first, 0.27) for k in range(first)]
        rest = n - first
        grid += [((k + 0.5) / rest, 0.73) for k in range(rest)]
        yield grid if along_x else [(b, a) for (a, b) in grid]


def canonical_place(items: list[dict], relations: list, W: int, H: int, rng: random.Random,
                    spread: bool = False):
    """Place ``items`` (in the order the caption names them) at fixed slots, with a small jitter.

    Why: with layouts drawn at random, the best flow-matching prediction from pure noise is the
    average of every allowed layout, a haze that a small model trained for two hours resolves into
    the wrong number of objects (runs 4-5, 2026-12-01: 78 % of images had extra objects). With one layout
    per prompt the x0 target is sharp from the first step, the way a hosted model's "default
    composition" is. The rules, which the model card states:
    one object: centred, or at the centre of its position word's region;
    ``a rel b``: a pair along the relation's axis, a on its side;
    a list: the first named first in reading order, in a row along the long side, else two rows.
    With ``spread`` a list takes whichever arrangement leaves the widest gaps instead of the first
    that fits: four small objects in a row at 1:1 are ~5 px apart, and a small model merges or
    splits objects that close (run 9's counting failures), so layout "spread" tries 2x2.
    Returns [(cx, cy)] in pixels, or None when the objects do not fit (the caller draws again).
    """
    radii = [object_radius_px(it["size"], W, H) for it in items]
    # the arrangement is chosen as if every size the prompt leaves open were big, so that the size
    # draw does not change where the objects go
    worst = [object_radius_px("big" if it.get("size_open") else it["size"], W, H) for it in items]
    n = len(items)
    cands: list[list[tuple[float, float]]] = []
    if n == 1:
        cands.append([region_centre(items[0].get("position"), W, H, radii[0])])
    elif relations:
        (i, rel, j), = relations  # one relation between two objects
        axis = "x" if rel in ("left_of", "right_of") else "y"
        first_i = rel in ("left_of", "above")  # i takes the first slot (left or top)
        for fr in _arrangements(2, W, H, axis):
            pts = [(fx * W, fy * H) for (fx, fy) in fr]
            a, b = (pts[0], pts[1]) if first_i else (pts[1], pts[0])
            slot = [None] * 2
            slot[i], slot[j] = a, b
            cands.append(slot)
    else:
        cands.extend([[(fx * W, fy * H) for (fx, fy) in fr] for fr in _arrangements(n, W, H)])
    cands = [_clamp_inside(pts, worst, W, H) for pts in cands]
    if spread:  # stable: ties keep the row-first order
        cands.sort(key=lambda pts: -_min_gap(pts, worst))
    for pts in cands:
        if not _fits(pts, worst, W, H):
            continue
        pts = _clamp_inside(pts, radii, W, H)
        j = CANON_JITTER * min(W, H)
        for _ in range(8):
            moved = [(x + rng.uniform(-j, j), y + rng.uniform(-j, j)) for (x, y) in pts]
            if _fits(moved, radii, W, H):
                return moved
        return pts
    return None


# --------------------------------------------------------------------------
# Layout read from the sampling noise (darkroom-mini's noise-coupled training)
# --------------------------------------------------------------------------
NOISE_DOWN = 8  # the noise is at the VAE's latent resolution: (12, H/8, W/8)
N_LAYOUT_CH = 12  # the latent channels: the noise a pipeline draws is (12, H/8, W/8)


def _phi(x):
    """Standard normal CDF: a N(0, 1) value -> a uniform one in (0, 1)."""
    from scipy.special import ndtr

    return ndtr(x)


def noise_codes(noise: np.ndarray) -> np.ndarray:
    """(12, h, w) noise -> (12, 3) i.i.d. N(0, 1) layout codes.

    Per channel, the three orthonormal contrasts between the 2x2 latent pixels of each transformer
    token (``FluxPipeline._pack_latents``), summed over the tokens and divided by sqrt(tokens). Why
    contrasts inside a token: a flat-colour image has none away from edges, so the codes stay readable
    in x_t = (1 - s) x0 + s noise well below s = 1; a plain mean would be swamped by the image's
    mean colour at once. Summed over all tokens, they are global: any token can read them with one
    uniform attention head."""
    a, b = noise[:, 0::2, 0::2], noise[:, 0::2, 1::2]
    c, d = noise[:, 1::2, 0::2], noise[:, 1::2, 1::2]
    con = np.stack([(a + b - c - d), (a - b + c - d), (a - b - c + d)], 1) / 2  # (12, 3, th, tw)
    return con.sum((2, 3)) / math.sqrt(con.shape[2] * con.shape[3])


def coupled_place(items: list[dict], relations: list, W: int, H: int, noise: np.ndarray, iters: int = 60):
    """Place ``items`` (same constraints as ``place``) as a smooth function of the noise's layout
    codes (``noise_codes``). Returns [(cx, cy, size)] in native pixels, or None when the constraints
    cannot be met (the caller draws another prompt, as when ``place`` fails).

    Why: with independent noise and data, the best a flow model can predict from pure noise is the
    average of every layout the prompt allows, a haze that a small model resolves into the wrong
    number of objects. When the layout is a function of the noise, the x0 target is sharp at every
    noise level: a data-dependent coupling that makes the flow's paths straight (rectified flow's
    reflow, here by construction). The noise stays N(0, I), so stock samplers and pipelines apply.

    Codes: the k-th item of colour c (in the order anchors, colour, shape) reads channel c for k = 0
    and the next unused one of channels 8..11 otherwise: u, v = Phi(code 0, 1) place it in its
    position region (or in the relation's wedge from its anchor), code 2 > 0 makes it big when the
    prompt gives no size. Overlaps are pushed apart (a smooth, deterministic relaxation)."""
    codes = noise_codes(noise)
    colours = list(COLOURS)
    gap = _object_gap(W, H)
    spare = iter(range(len(colours), N_LAYOUT_CH))
    seen: dict[str, int] = {}
    rel_of = {i: (rel, j) for (i, rel, j) in relations}
    uv, rad, sizes = [], [], []
    for it in items:
        n = seen.get(it["colour"], 0)
        seen[it["colour"]] = n + 1
        ch = colours.index(it["colour"]) if n == 0 else next(spare, None)
        if ch is None:
            return None
        uv.append((float(_phi(codes[ch, 0])), float(_phi(codes[ch, 1]))))
        sizes.append(it.get("size") or ("small" if it.get("force_small") or codes[ch, 2] <= 0 else "big"))
        rad.append(object_radius_px(sizes[-1], W, H))
    pos, regions = [], []
    for k, it in enumerate(items):
        r, (u, v) = rad[k], uv[k]
        reg = list(_clamp_region(_pos_region(it.get("position"), W, H, r), W, H, r))
        for i, (rel, j) in rel_of.items():  # an anchor leaves room for what is placed relative to it
            if j == k:
                room = 2 * rad[i] + 1 + r + gap
                if rel == "left_of":
                    reg[0] = max(reg[0], room)
                elif rel == "right_of":
                    reg[1] = min(reg[1], W - room)
                elif rel == "above":
                    reg[2] = max(reg[2], room)
                else:
                    reg[3] = min(reg[3], H - room)
        if reg[0] > reg[1] or reg[2] > reg[3]:
            return None
        if k in rel_of:
            rel, j = rel_of[k]
            (jx, jy), sep = pos[j], r + rad[j] + gap
            horiz = rel in ("left_of", "right_of")
            room = (jx if rel == "left_of" else W - jx if rel == "right_of" else jy if rel == "above" else H - jy) \
                - r - 1
            d = sep + u * max(0.0, min(0.25 * (W if horiz else H), room - sep))
            side = (2 * v - 1) * 0.35 * d
            x, y = (jx - d if rel == "left_of" else jx + d, jy + side) if horiz else \
                (jx + side, jy - d if rel == "above" else jy + d)
            reg = [r + 1, W - r - 1, r + 1, H - r - 1]
            x, y = min(max(x, reg[0]), reg[1]), min(max(y, reg[2]), reg[3])
        else:
            x, y = reg[0] + u * (reg[1] - reg[0]), reg[2] + v * (reg[3] - reg[2])
        pos.append([x, y])
        regions.append(reg)
    for _ in range(iters):  # push overlapping pairs apart along their centre line, keep each in its region
        moved = False
        for i in range(len(items)):
            for j in range(i):
                dx, dy = pos[i][0] - pos[j][0], pos[i][1] - pos[j][1]
                dist = math.hypot(dx, dy)
                need = rad[i] + rad[j] + gap
                if dist < need:
                    moved = True
                    if dist < 1e-6:
                        dx, dy, dist = 1.0, 0.0, 1.0
                    push = (need - dist) / 2 + 0.5
                    pos[i][0] += dx / dist * push
                    pos[i][1] += dy / dist * push
                    pos[j][0] -= dx / dist * push
                    pos[j][1] -= dy / dist * push
        for p, (xlo, xhi, ylo, yhi) in zip(pos, regions):
            p[0], p[1] = min(max(p[0], xlo), xhi), min(max(p[1], ylo), yhi)
        if not moved:
            break
    for i in range(len(items)):  # what the prompt says must hold after the relaxation
        for j in range(i):
            if math.hypot(pos[i][0] - pos[j][0], pos[i][1] - pos[j][1]) < rad[i] + rad[j] + gap:
                return None
        if i in rel_of:
            rel, j = rel_of[i]
            dx, dy = pos[i][0] - pos[j][0], pos[i][1] - pos[j][1]
            ok = {"left_of": -dx > 0.6 * abs(dy), "right_of": dx > 0.6 * abs(dy),
                  "above": -dy > 0.6 * abs(dx), "below": dy > 0.6 * abs(dx)}[rel]
            if not ok:
                return None
    return [(p[0], p[1], sz) for p, sz in zip(pos, sizes)]
