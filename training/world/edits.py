"""Kontext edit triplets (source, instruction, target): recolour, move, add, remove and change the
background, and where a canonical edit puts a moved or added object.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict

import numpy as np

from training.world.layouts import (CANONICAL, _clamp_region, _free, _object_gap, _pos_region,
                                    region_centre)
from training.world.prompts import _obj_phrase, _rand_bg, _w, sample_spec, scene_from_spec
from training.world.scenes import Obj, Scene, object_radius_px
from training.world.vocabulary import (ASPECTS, BG_WORDS, COLOUR_WORDS, COLOURS, POS_WORDS, POSITIONS,
                                       SHAPE_WORDS, SHAPES, SIZES)


EDIT_KINDS = ["recolour", "move", "add", "remove", "background"]
# how often sample_edit draws each kind (runs 1-14, run 15's first stage); `python -m training.train --edit-mix` overrides it per run
EDIT_WEIGHTS = {"recolour": 1.2, "move": 1.0, "add": 1.0, "remove": 1.0, "background": 0.8}


def _describe(o: Obj, mode: str, rng: random.Random) -> str:
    return f"the {_w(COLOUR_WORDS, o.colour, mode, rng)} {_w(SHAPE_WORDS, o.shape, mode, rng)}"


def _unique(objs: list[Obj], o: Obj) -> bool:
    return sum(1 for x in objs if (x.shape, x.colour) == (o.shape, o.colour)) == 1


def _scene_spec(scene: Scene, category="edit") -> dict:
    groups: dict = {}
    for o in scene.objects:
        k = (o.shape, o.colour)
        groups.setdefault(k, 0)
        groups[k] += 1
    bg = scene.bg
    return {"category": category,
            "groups": [{"shape": s, "colour": c, "size": None, "count": n, "position": None}
                       for (s, c), n in groups.items()],
            "relations": [], "exact": True,
            "background": list(bg[:3]) if bg[0] == "gradient" else list(bg)}


ADD_SPOTS = ("first", "roomiest", "nearest")
BLOCKED_SPOTS = ("skip", "nearest")
GRADIENT_DIRS = ("any", "v")
ADD_CANDIDATES = (None, "left", "right", "top", "bottom")  # the spots an add without a position word may take


def _clearance(x: float, y: float, r: float, others: list) -> float:
    """Edge-to-edge distance from a circle of radius r at (x, y) to the nearest of ``others``."""
    return min((math.hypot(x - px, y - py) - r - pr for px, py, pr in others), default=math.inf)


def add_spot(W: int, H: int, r: float, others: list, rule: str = "first") -> tuple[float, float] | None:
    """Where a canonical add without a position word goes, or None when no candidate is free.

    ``first``: the first free of the image centre and the left, right, top and bottom region centres
    (runs up to 16). Free means a gap of 6 % of the short side, so about half of these adds sit within
    half a token of a rule boundary (an object 8 px away flips the answer), and the model hedges:
    it draws the object at two candidates. ``roomiest``: the candidate with the most room around it
    (ties to the earlier one); its answer flips only when two candidates have nearly equal room,
    which a ±6 px nudge of one source object causes 2.6 times less often (15 % against 39 %).
    ``nearest``: the free point nearest the image centre (1 px grid over the whole image), which moves
    with the objects instead of jumping between five spots: a ±6 px nudge moves it more than a token
    (16 px) for 8 % of these adds (roomiest 20 %, first 39 %)."""
    gap = _object_gap(W, H)
    if rule == "nearest":
        return _nearest_free(W / 2, H / 2, (r + 1, W - r - 1, r + 1, H - r - 1), r, others, gap)
    spots = [region_centre(p, W, H, r) for p in ADD_CANDIDATES]
    if rule == "roomiest":
        best = max(range(len(spots)), key=lambda i: (_clearance(*spots[i], r, others), -i))
        spots = [spots[best]]
    elif rule != "first":
        raise ValueError(f"unknown add spot rule {rule!r}: {ADD_SPOTS}")
    for x, y in spots:
        if _free(x, y, r, others, gap):
            return x, y
    return None


def position_spot(pos: str, W: int, H: int, r: float, others: list, away: tuple[float, float] | None = None,
                  blocked: str = "skip") -> tuple[float, float] | None:
    """The canonical spot for an object of radius r moved or added to a position word's region: the
    region centre when it is free (and, for a move, 1.6 r from ``away``, the object's old centre).
    When it is not, ``skip`` (runs up to 16) gives None, so such an edit was redrawn and never trained
    on; but a third of the evaluation's moves and positioned adds are like that (another object near
    the centre, or the object already there), and a model trained that way got 14 of 23 of those
    right against 37 of 40 of the rest. ``nearest`` gives the free point of the region nearest its
    centre (1 px grid)."""
    gap = _object_gap(W, H)
    x, y = region_centre(pos, W, H, r)
    if _free(x, y, r, others, gap) and (away is None or math.hypot(x - away[0], y - away[1]) > 1.6 * r):
        return x, y
    if blocked == "skip":
        return None
    if blocked != "nearest":
        raise ValueError(f"unknown blocked spot rule {blocked!r}: {BLOCKED_SPOTS}")
    box = _clamp_region(_pos_region(pos, W, H, r), W, H, r)
    return _nearest_free(x, y, box, r, others, gap, away)


def _nearest_free(x: float, y: float, box: tuple, r: float, others: list, gap: float,
                  away: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """The point of ``box`` (xlo, xhi, ylo, yhi) nearest (x, y) where a circle of radius r keeps ``gap``
    from every one of ``others`` (and 1.6 r from ``away``); None when there is none."""
    xlo, xhi, ylo, yhi = box
    # a 1 px grid through (x, y), so that a spot straight along an axis from it is exact
    gx, gy = np.meshgrid(x + np.arange(math.ceil(xlo - x), math.floor(xhi - x) + 1),
                         y + np.arange(math.ceil(ylo - y), math.floor(yhi - y) + 1))
    ok = np.ones(gx.shape, bool)
    for px, py, pr in others:
        ok &= np.hypot(gx - px, gy - py) >= r + pr + gap
    if away is not None:
        ok &= np.hypot(gx - away[0], gy - away[1]) > 1.6 * r
    if not ok.any():
        return None
    d = np.where(ok, np.hypot(gx - x, gy - y), np.inf)
    i = np.unravel_index(np.argmin(d), d.shape)  # ties: the first in row order, so one answer
    return float(gx[i]), float(gy[i])


def sample_edit(rng: random.Random, kind: str | None = None, aspect: str | None = None, mode: str = "train",
                layout: str = "random", weights: dict[str, float] | None = None, add_rule: str = "first",
                gradient: str = "any", blocked: str = "skip"):
    """Return (instruction, source_scene, target_scene, target_spec).

    The source scene's layout is always random (people edit any picture). With
    ``layout="canonical"`` a moved or added object goes to a fixed spot, as in ``canonical_place``:
    its position word's region centre (``position_spot(..., blocked)``), or for an add without one
    ``add_spot(..., add_rule)``; and with
    ``gradient="v"`` a new gradient background runs top to bottom. An instruction never says which way a
    gradient runs, so with ``"any"`` (runs up to 16: horizontal or vertical at random) the model learns
    the average of both, a diagonal blend whose edges match neither colour. ``weights``: how often each kind is drawn
    when ``kind`` is None (default ``EDIT_WEIGHTS``); one draw per edit whatever the weights, so a
    run with other weights keeps the same random stream up to the kinds that change."""
    if gradient not in GRADIENT_DIRS:
        raise ValueError(f"unknown gradient rule {gradient!r}: {GRADIENT_DIRS}")
    if blocked not in BLOCKED_SPOTS:
        raise ValueError(f"unknown blocked spot rule {blocked!r}: {BLOCKED_SPOTS}")
    w = EDIT_WEIGHTS if weights is None else weights
    kind_weights = [w[k] for k in EDIT_KINDS]
    for _ in range(1000):
        kind_ = kind or rng.choices(EDIT_KINDS, weights=kind_weights)[0]
        asp = aspect or rng.choice(list(ASPECTS))
        W, H = ASPECTS[asp]
        n = rng.choice([1, 1, 2, 2, 3])
        spec = sample_spec(rng, rng.choice(["single", "two", "binding", "multi"]) if n > 1 else "single")
        src = scene_from_spec(spec, asp, rng)
        if src is None:
            continue
        objs = src.objects
        tgt_objs = [Obj(**asdict(o)) for o in objs]
        bg = src.bg
        spec_extra: dict = {}
        if kind_ == "recolour":
            k = rng.randrange(len(objs))
            o = objs[k]
            if not _unique(objs, o):
                continue
            new = rng.choice([c for c in COLOURS if c != o.colour])
            tgt_objs[k].colour = new
            if not _unique(tgt_objs, tgt_objs[k]):
                continue
            d = _describe(o, mode, rng)
            c = _w(COLOUR_WORDS, new, mode, rng)
            if mode != "para":
                instr = rng.choice([f"make {d} {c}", f"change {d} to {c}", f"turn {d} {c}", f"recolor {d} {c}",
                                    f"paint {d} {c}"])
            else:
                instr = rng.choice([f"give {d} a {c} colour", f"I want {d} to be {c}"])
        elif kind_ == "move":
            k = rng.randrange(len(objs))
            o = objs[k]
            if not _unique(objs, o):
                continue
            pos = rng.choice(POSITIONS)
            r = object_radius_px(o.size, W, H)
            others = [(p.cx * W, p.cy * H, object_radius_px(p.size, W, H)) for j, p in enumerate(objs) if j != k]
            xlo, xhi, ylo, yhi = _clamp_region(_pos_region(pos, W, H, r), W, H, r)
            ok = False
            if layout in CANONICAL:
                spot = position_spot(pos, W, H, r, others, away=(o.cx * W, o.cy * H), blocked=blocked)
                ok = spot is not None
                if ok:
                    x, y = spot
            for _t in range(0 if layout in CANONICAL else 60):
                x, y = rng.uniform(xlo, xhi), rng.uniform(ylo, yhi)
                if _free(x, y, r, others, _object_gap(W, H)) and math.hypot(x - o.cx * W, y - o.cy * H) > 1.6 * r:
                    ok = True
                    break
            if not ok:
                continue
            tgt_objs[k].cx, tgt_objs[k].cy = x / W, y / H
            d = _describe(o, mode, rng)
            p = _w(POS_WORDS, pos, mode, rng)
            p2 = {"left": "to the left", "right": "to the right", "top": "to the top", "bottom": "to the bottom",
                  "center": "to the center"}[pos]
            if mode != "para":
                instr = rng.choice([f"move {d} {p2}", f"put {d} {p}", f"place {d} {p}", f"move {d} {p}"])
            else:
                instr = rng.choice([f"shift {d} so it is {p}", f"relocate {d} {p2}"])
            spec_extra = {"moved": {"shape": o.shape, "colour": o.colour, "position": pos}}
        elif kind_ == "add":
            if len(objs) >= 4:
                continue
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            if any((p.shape, p.colour) == (shape, colour) for p in objs):
                continue
            size = rng.choice(SIZES)
            pos = rng.choice([None, None] + POSITIONS)
            r = object_radius_px(size, W, H)
            others = [(p.cx * W, p.cy * H, object_radius_px(p.size, W, H)) for p in objs]
            xlo, xhi, ylo, yhi = _clamp_region(_pos_region(pos, W, H, r), W, H, r)
            ok = False
            if layout in CANONICAL:
                if pos:
                    spot = position_spot(pos, W, H, r, others, blocked=blocked)
                else:
                    spot = add_spot(W, H, r, others, add_rule)
                ok = spot is not None
                if ok:
                    x, y = spot
            for _t in range(0 if layout in CANONICAL else 80):
                x, y = rng.uniform(xlo, xhi), rng.uniform(ylo, yhi)
                if _free(x, y, r, others, _object_gap(W, H)):
                    ok = True
                    break
            if not ok:
                continue
            newo = Obj(shape, colour, size, x / W, y / H)
            tgt_objs.append(newo)
            g = {"shape": shape, "colour": colour, "size": size, "count": 1}
            ph = _obj_phrase(g, mode, rng)
            pp = (" " + _w(POS_WORDS, pos, mode, rng)) if pos else ""
            if mode != "para":
                instr = rng.choice([f"add {ph}{pp}", f"put {ph}{pp}", f"insert {ph}{pp}", f"draw {ph}{pp}"])
            else:
                instr = rng.choice([f"include {ph}{pp} as well", f"also show {ph}{pp}"])
            if pos:
                spec_extra = {"moved": {"shape": shape, "colour": colour, "position": pos}}
        elif kind_ == "remove":
            if len(objs) < 2 and rng.random() < 0.5:
                continue
            k = rng.randrange(len(objs))
            o = objs[k]
            if not _unique(objs, o):
                continue
            del tgt_objs[k]
            d = _describe(o, mode, rng)
            if mode != "para":
                instr = rng.choice([f"remove {d}", f"delete {d}", f"take away {d}", f"erase {d}"])
            else:
                instr = rng.choice([f"get rid of {d}", f"make {d} disappear"])
        else:  # background
            newbg = _rand_bg(rng)
            if newbg[:3] == bg[:3]:
                continue
            bg = newbg
            if layout in CANONICAL and gradient == "v" and bg[0] == "gradient":
                bg = (*bg[:3], "v")  # the direction was still drawn: the random stream stays the same
            if bg[0] == "plain":
                c = _w(BG_WORDS, bg[1], mode, rng)
                if mode != "para":
                    instr = rng.choice([f"change the background to {c}", f"make the background {c}",
                                        f"use a {c} background", f"set the background to {c}"])
                else:
                    instr = rng.choice([f"swap the backdrop for {c}", f"recolour the background {c}"])
            else:
                a = _w(BG_WORDS, bg[1], mode, rng)
                b = _w(BG_WORDS, bg[2], mode, rng)
                if mode != "para":
                    instr = rng.choice([f"make the background a gradient from {a} to {b}",
                                        f"change the background to a {a} to {b} gradient"])
                else:
                    instr = rng.choice([f"swap the backdrop for a {a}-{b} blend"])
        tgt = Scene(asp, tuple(bg), tgt_objs)
        tspec = _scene_spec(tgt)
        tspec["edit"] = kind_
        tspec.update(spec_extra)
        return instr, src, tgt, tspec
    raise RuntimeError("could not sample edit")
