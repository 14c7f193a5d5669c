"""Prompts: what a prompt asks for (a *spec*), the held-out split, the caption wording, and the
text-to-image samples (caption, spec, scene) that training and the evaluator draw.

A *spec* is a plain dict describing what a prompt asks for:
{"category": str,
 "groups": [{"shape", "colour", "size"|None, "count", "position"|None}],
 "relations": [[i, rel, j]],      # group i rel group j
 "exact": bool,                   # no other objects allowed
 "background": None | ("plain", name) | ("gradient", a, b)}
"""
from __future__ import annotations

import hashlib
import random

import numpy as np

from training.world.layouts import CANONICAL, canonical_place, coupled_place, place
from training.world.scenes import Obj, Scene
from training.world.vocabulary import (ASPECTS, BG_COLOURS, BG_WORDS, COLOUR_WORDS, COLOURS, EXTRA_WORDS,
                                       INVERSE_REL, NUM_WORDS, POS_WORDS, POSITIONS, REL_WORDS, RELATIONS,
                                       SHAPE_PLURAL, SHAPE_WORDS, SHAPES, SIZE_WORDS, SIZES, _EXTRA_OF)


def _rich_p() -> float:
    """``training.world.RICH_P``, read when a caption is worded: the training data code sets it on the
    package (``train.render_chunk``, per chunk), so it lives there and not in this module."""
    from training import world

    return world.RICH_P


def _w(table: dict, key, mode: str, rng: random.Random) -> str:
    """A word for ``key``. mode 'train': the core training words; 'para': the paraphrase set's;
    'rich': with probability ``RICH_P`` an ``EXTRA_WORDS`` one, else a core word (training captions)."""
    if mode == "rich":
        if rng.random() < _rich_p():
            return rng.choice(EXTRA_WORDS[_EXTRA_OF[id(table)]][key])
        mode = "train"
    return rng.choice(table[key][mode])


def _frame(core: list[str], extra: list[str], mode: str, rng: random.Random) -> str:
    """A caption frame: core training frames, or for 'rich' captions an extra one (``RICH_P``)."""
    if mode == "rich" and rng.random() < _rich_p():
        return rng.choice(extra)
    return rng.choice(core)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------
# Held-out split
# --------------------------------------------------------------------------
HELDOUT_FRACTION = 0.12


def _h(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def combo_keys(spec: dict) -> list[str]:
    """Keys of the attribute combinations a prompt exercises."""
    g = spec["groups"]
    keys = []
    if len(g) == 1:
        x = g[0]
        keys.append(f"1|{x['colour']}|{x['shape']}|{x.get('position')}|{x['count']}")
    else:
        parts = sorted(f"{x['colour']}-{x['shape']}" for x in g)
        keys.append("n|" + "|".join(parts))
    return keys


def is_heldout(spec: dict) -> bool:
    return any(_h(k) < HELDOUT_FRACTION for k in combo_keys(spec))


# --------------------------------------------------------------------------
# Prompt/scene sampling
# --------------------------------------------------------------------------
CATEGORIES = ["single", "two", "colour", "position", "counting", "binding"]


def _obj_phrase(g: dict, mode: str, rng: random.Random, count_word: bool = True, say_size: bool | None = None) -> str:
    n = g["count"]
    colour = _w(COLOUR_WORDS, g["colour"], mode, rng)
    shape = _w(SHAPE_WORDS, g["shape"], mode, rng)
    if n > 1:
        shape = SHAPE_PLURAL.get(shape, shape + "s")
    words = []
    if g.get("size") and (say_size is None or say_size):
        words.append(_w(SIZE_WORDS, g["size"], mode, rng))
    words += [colour, shape]
    body = " ".join(words)
    if not count_word:
        return body
    num = _w(NUM_WORDS, n, mode, rng)
    if num == "a":
        num = _article(body)
    return f"{num} {body}"


def _bg_phrase(bg, mode, rng):
    if bg[0] == "plain":
        c = _w(BG_WORDS, bg[1], mode, rng)
        if mode != "para":
            return _frame([f"on a {c} background", f"against a {c} background", f"on {c}", f"with a {c} backdrop"],
                          [f"in front of a {c} background", f"on a {c} backdrop", f"with a {c} background",
                           f"on a background of {c}"], mode, rng)
        return rng.choice([f"set on a plain {c} canvas", f"over a {c} field"])
    a = _w(BG_WORDS, bg[1], mode, rng)
    b = _w(BG_WORDS, bg[2], mode, rng)
    if mode != "para":
        return _frame([f"on a {a} to {b} gradient", f"with a gradient from {a} to {b}",
                       f"on a {a} and {b} gradient background"],
                      [f"on a background going from {a} to {b}", f"with a {a}/{b} gradient",
                       f"on a gradient of {a} and {b}"], mode, rng)
    return rng.choice([f"over a background fading from {a} into {b}", f"on a {a}-{b} blend"])


def caption(spec: dict, bg, mode: str, rng: random.Random, with_bg: bool, shuffle: bool = True) -> str:
    """Free-English caption for a spec. mode: 'train', 'rich' (training captions: more words and
    frames, see ``EXTRA_WORDS``) or 'para'. ``shuffle``: name a list's groups
    in random order (else in the spec's order)."""
    g = spec["groups"]
    rels = spec["relations"]
    if len(g) == 1 and g[0].get("position"):
        o = _obj_phrase(g[0], mode, rng)
        p = _w(POS_WORDS, g[0]["position"], mode, rng)
        if mode != "para":
            s = _frame([f"{o} {p}", f"{p}, {o}", f"there is {o} {p}", f"{p} there is {o}", f"an image of {o} {p}"],
                       [f"{o} located {p}", f"{o} is {p}", f"a photo of {o} {p}", f"here is {o} {p}",
                        f"{p} we have {o}", f"an illustration with {o} {p}", f"{o} positioned {p}"], mode, rng)
        else:
            s = rng.choice([f"I see {o} {p}", f"{o} sits {p}", f"a drawing where {o} is placed {p}"])
    elif rels:
        i, rel, j = rels[0]
        a = _obj_phrase(g[i], mode, rng)
        b = _obj_phrase(g[j], mode, rng)
        if rng.random() < 0.5:  # swap word order, invert relation
            a, b, rel = b, a, INVERSE_REL[rel]
        r = _w(REL_WORDS, rel, mode, rng)
        if mode != "para":
            s = _frame([f"{a} {r} {b}", f"{a} placed {r} {b}", f"there is {a} {r} {b}", f"a picture of {a} {r} {b}"],
                       [f"{a} is {r} {b}", f"{a} located {r} {b}", f"a photo of {a} {r} {b}", f"here, {a} {r} {b}",
                        f"we have {a} {r} {b}", f"{a} positioned {r} {b}", f"an illustration of {a} {r} {b}"],
                       mode, rng)
        else:
            s = rng.choice([f"I see {a} sitting {r} {b}", f"{a} that is {r} {b}", f"a sketch in which {a} is {r} {b}"])
    else:
        parts = [_obj_phrase(x, mode, rng) for x in g]
        if shuffle:
            rng.shuffle(parts)
        if len(parts) == 1:
            lst = parts[0]
        elif mode != "para":
            lst = rng.choice([", ".join(parts[:-1]) + " and " + parts[-1], " and ".join(parts)]) if len(parts) > 2 \
                else rng.choice([f"{parts[0]} and {parts[1]}", f"{parts[0]} with {parts[1]}", f"{parts[0]}, {parts[1]}"])
            if mode == "rich" and rng.random() < _rich_p():
                joint = rng.choice([" plus ", " along with ", " together with ", " and also "])
                lst = ", ".join(parts[:-1]) + joint + parts[-1]
        else:
            lst = ", ".join(parts[:-1]) + " as well as " + parts[-1]
        if mode != "para":
            many = sum(x["count"] for x in g) > 1
            s = _frame(["{}", "{}", "an image of {}", "there are {}" if many else "there is {}", "a picture showing {}",
                        "{}"],
                       ["a photo of {}", "an illustration of {}", "a scene with {}", "showing {}",
                        "here are {}" if many else "here is {}", "we have {}", "{} are shown" if many else "{} is shown",
                        "a render of {}"], mode, rng).format(lst)
        else:
            s = rng.choice(["I see {}", "a drawing containing {}", "{} can be seen"]).format(lst)
    if with_bg:
        s = f"{s} {_bg_phrase(bg, mode, rng)}"
    return s


def _rand_bg(rng: random.Random):
    names = list(BG_COLOURS)
    if rng.random() < 0.6:
        return ("plain", rng.choice(names))
    a, b = rng.sample(names, 2)
    return ("gradient", a, b, rng.choice(["h", "v"]))


def sample_spec(rng: random.Random, category: str | None = None) -> dict:
    """Sample a prompt spec of a category (random category if None)."""
    cat = category or rng.choices(
        ["single", "two", "colour", "position", "relation", "counting", "binding", "multi", "count_mix"],
        weights=[1.0, 1.0, 0.6, 1.2, 1.6, 1.3, 1.2, 0.8, 0.8])[0]
    colours = list(COLOURS)
    size = lambda: rng.choice(SIZES) if rng.random() < 0.5 else None  # noqa: E731
    G = lambda **kw: {"shape": rng.choice(SHAPES), "colour": rng.choice(colours), "size": size(),  # noqa: E731
                      "count": 1, "position": None, **kw}
    rels = []
    if cat == "single" or cat == "colour":
        groups = [G()]
    elif cat == "position":
        groups = [G(position=rng.choice(POSITIONS))]
    elif cat == "two":
        groups = [G(), G()]
        while (groups[1]["shape"], groups[1]["colour"]) == (groups[0]["shape"], groups[0]["colour"]):
            groups[1] = G()
    elif cat == "relation":
        a, b = G(), G()
        while (b["shape"], b["colour"]) == (a["shape"], a["colour"]):
            b = G()
        groups = [a, b]
        rels = [[1, rng.choice(RELATIONS), 0]]
        cat = "position"
    elif cat == "binding":
        c1, c2 = rng.sample(colours, 2)
        s1, s2 = rng.sample(SHAPES, 2)
        groups = [G(shape=s1, colour=c1), G(shape=s2, colour=c2)]
    elif cat == "counting":
        n = rng.choice([2, 3, 4])
        groups = [G(count=n, size=rng.choice([None, "small", "small"]))]
    elif cat == "multi":
        k = rng.choice([3, 4])
        groups = []
        while len(groups) < k:
            g = G(size=None)
            if all((g["shape"], g["colour"]) != (x["shape"], x["colour"]) for x in groups):
                groups.append(g)
        cat = "two"
    elif cat == "count_mix":
        n = rng.choice([2, 3])
        a = G(count=n, size=None)
        b = G(size=None)
        while (b["shape"], b["colour"]) == (a["shape"], a["colour"]):
            b = G(size=None)
        groups = [a, b]
        cat = "counting"
    else:
        raise ValueError(cat)
    return {"category": cat, "groups": groups, "relations": rels, "exact": True, "background": None}


def scene_from_spec(spec: dict, aspect: str, rng: random.Random, bg=None, layout_noise: np.ndarray | None = None,
                    layout: str = "random") -> Scene | None:
    """A scene for ``spec``; with ``layout_noise`` (noise at the latent resolution, see
    ``coupled_place``) the layout is read from it; with ``layout="canonical"`` the objects take
    ``canonical_place``'s slots in the order of ``spec["groups"]``; else it is drawn from ``rng``."""
    W, H = ASPECTS[aspect]
    items, owners = [], []
    for gi, g in enumerate(spec["groups"]):
        for _ in range(g["count"]):
            small = g["count"] >= 3 and g.get("size") is None
            if layout_noise is not None:  # the noise decides unspecified sizes
                sz = g.get("size")
            else:  # (the draw happens even when overridden: the eval sets depend on this rng stream)
                sz = g.get("size") or rng.choice(SIZES)
                sz = "small" if small else sz
            items.append({"size": sz, "position": g.get("position"), "shape": g["shape"], "colour": g["colour"],
                          "force_small": small, "size_open": g.get("size") is None and not small})
            owners.append(gi)
    # groups' first item index
    first = {}
    for k, gi in enumerate(owners):
        first.setdefault(gi, k)
    relations = []
    for (i, rel, j) in spec["relations"]:
        relations.append((first[i], rel, first[j]))
    # order so that relation targets come first (with layout noise: then colour and shape, a canonical
    # order the model can learn, since it decides which item reads which noise channel)
    src = lambda k: 1 if any(k == a for (a, _, _) in relations) else 0  # noqa: E731
    if layout in CANONICAL:
        order = list(range(len(items)))  # the groups' (caption's) order decides the slots
    elif layout_noise is not None:
        cols = list(COLOURS)
        order = sorted(range(len(items)), key=lambda k: (src(k), cols.index(items[k]["colour"]),
                                                         SHAPES.index(items[k]["shape"])))
    else:
        order = sorted(range(len(items)), key=src)
    inv = {k: n for n, k in enumerate(order)}
    items_o = [items[k] for k in order]
    rel_o = [(inv[a], r, inv[b]) for (a, r, b) in relations]
    rel_o = [(a, r, b) if b < a else (b, INVERSE_REL[r], a) for (a, r, b) in rel_o]
    if layout in CANONICAL:
        pos = canonical_place(items_o, rel_o, W, H, rng, spread=layout == "spread")
        if pos is None:
            return None
        objs = [Obj(it["shape"], it["colour"], it["size"], x / W, y / H) for it, (x, y) in zip(items_o, pos)]
    elif layout_noise is not None:
        got = coupled_place(items_o, rel_o, W, H, layout_noise)
        if got is None:
            return None
        objs = [Obj(it["shape"], it["colour"], sz, x / W, y / H) for it, (x, y, sz) in zip(items_o, got)]
    else:
        pos = place(items_o, rel_o, W, H, rng)
        if pos is None:
            return None
        objs = [Obj(it["shape"], it["colour"], it["size"], x / W, y / H) for it, (x, y) in zip(items_o, pos)]
    if bg is None:
        bg = spec["background"] if spec.get("background") else _rand_bg(rng)
        if bg[0] == "gradient" and len(bg) == 3:
            bg = (*bg, rng.choice(["h", "v"]))
    return Scene(aspect, tuple(bg), objs)


def sample_t2i(rng: random.Random, split: str = "train", category: str | None = None,
               aspect: str | None = None, mode: str | None = None, layout_noise: np.ndarray | None = None,
               layout: str = "random"):
    """Sample (caption, spec, scene).

    split: 'train' (combinations not held out), 'heldout' (held-out combos), 'any'.
    mode: caption wording 'train' or 'para' (default: 'train').
    layout: 'random' or 'canonical' (``canonical_place``: the caption names the groups in the
    order of their slots).
    """
    mode = mode or "train"
    for _ in range(1000):
        spec = sample_spec(rng, category)
        if split != "any":
            if is_heldout(spec) != (split == "heldout"):
                continue
        asp = aspect or rng.choice(list(ASPECTS))
        if layout in CANONICAL and len(spec["groups"]) > 1 and not spec["relations"]:
            groups = list(spec["groups"])
            rng.shuffle(groups)  # the mention order, which the slots follow
            spec = dict(spec, groups=groups)
        scene = scene_from_spec(spec, asp, rng, layout_noise=layout_noise, layout=layout)
        if scene is None:
            continue
        with_bg = rng.random() < 0.4
        if with_bg:
            bg = scene.bg
            spec = dict(spec, background=list(bg[:3]) if bg[0] == "gradient" else list(bg))
        cap = caption(spec, scene.bg, mode, rng, with_bg, shuffle=layout not in CANONICAL)
        return cap, spec, scene
    raise RuntimeError("could not sample scene")
