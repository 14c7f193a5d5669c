"""Scenes and how they are drawn: a background (plain or a two-colour gradient) with flat-coloured
objects, rendered anti-aliased at the native size, and the per-pixel labels of the auxiliary loss.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from training.world.vocabulary import ASPECTS, BG_COLOURS, COLOURS, SHAPES


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    cx: float  # normalised centre x (0..1)
    cy: float  # normalised centre y (0..1)


@dataclass
class Scene:
    aspect: str
    bg: tuple  # ("plain", name) or ("gradient", name1, name2, "h"|"v")
    objects: list[Obj]

    @property
    def size(self) -> tuple[int, int]:
        return ASPECTS[self.aspect]

    def to_dict(self) -> dict:
        return {"aspect": self.aspect, "bg": list(self.bg), "objects": [asdict(o) for o in self.objects]}

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        return Scene(d["aspect"], tuple(d["bg"]), [Obj(**o) for o in d["objects"]])


def object_radius_px(size: str, w: int, h: int) -> float:
    big = min(0.17 * math.sqrt(w * h), 0.23 * min(w, h))
    return big if size == "big" else big * 0.62


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
SS = 4  # supersampling factor


def _shape_mask(shape: str, cx: float, cy: float, r: float, W: int, H: int) -> Image.Image:
    """Binary mask (mode L) of one shape at supersampled resolution."""
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        s = r * 0.86
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + r * 0.98, cy + r * 0.8), (cx - r * 0.98, cy + r * 0.8)]
        d.polygon(pts, fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a) + r * 0.08))
        d.polygon(pts, fill=255)
    elif shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x / 17.0 * r, cy - (y + 2.5) / 16.0 * r))
        d.polygon(pts, fill=255)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * 0.55
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        raise ValueError(shape)
    return m


def render_background(bg: tuple, W: int, H: int) -> np.ndarray:
    if bg[0] == "plain":
        c = np.array(BG_COLOURS[bg[1]], np.float32)
        return np.broadcast_to(c, (H, W, 3)).copy()
    _, a, b, direction = bg
    ca = np.array(BG_COLOURS[a], np.float32)
    cb = np.array(BG_COLOURS[b], np.float32)
    if direction == "h":
        t = np.linspace(0, 1, W, dtype=np.float32)[None, :, None]
    else:
        t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    img = ca * (1 - t) + cb * t
    return np.broadcast_to(img, (H, W, 3)).copy()


def render(scene: Scene, size: tuple[int, int] | None = None) -> Image.Image:
    """Render a scene (anti-aliased) at its native size or ``size``=(w, h)."""
    W, H = size or scene.size
    img = render_background(scene.bg, W, H)
    for o in scene.objects:
        r = object_radius_px(o.size, *scene.size) * (W / scene.size[0])
        m = _shape_mask(o.shape, o.cx * W * SS, o.cy * H * SS, r * SS, W * SS, H * SS)
        a = np.asarray(m.resize((W, H), Image.BOX), np.float32)[..., None] / 255.0
        img = img * (1 - a) + np.array(COLOURS[o.colour], np.float32) * a
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


LABEL_FACTOR = 4  # labels are at the analytic latents' resolution (the image avg-pooled 4x4)


def render_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ground truth at 1/4 of the native size, for darkroom-mini's auxiliary training loss.

    Returns ``classes`` (2, h, w) uint8: colour index (0 background, 1..8 in ``COLOURS`` order) and
    shape index (0 background, 1..6 in ``SHAPES`` order) of the object covering at least half of the
    pixel (the topmost, as ``render`` paints them); and ``offsets`` (2, h, w) float32: the pixel's
    offset from its object's centre in units of that object's radius (0 on the background), which
    says which *instance* a pixel belongs to, and so where each object is and how many there are."""
    W, H = scene.size
    f = LABEL_FACTOR
    w, h = W // f, H // f
    classes = np.zeros((2, h, w), np.uint8)
    offsets = np.zeros((2, h, w), np.float32)
    gx = (np.arange(w, dtype=np.float32) + 0.5) * f
    gy = (np.arange(h, dtype=np.float32) + 0.5) * f
    colours, shapes = list(COLOURS), SHAPES
    for o in scene.objects:
        r = object_radius_px(o.size, W, H)
        m = _shape_mask(o.shape, o.cx * w * SS, o.cy * h * SS, r / f * SS, w * SS, h * SS)
        cov = np.asarray(m.resize((w, h), Image.BOX), np.float32) / 255.0
        on = cov >= 0.5
        classes[0][on] = colours.index(o.colour) + 1
        classes[1][on] = shapes.index(o.shape) + 1
        offsets[0][on] = np.broadcast_to((gx[None, :] - o.cx * W) / r, (h, w))[on]
        offsets[1][on] = np.broadcast_to((gy[:, None] - o.cy * H) / r, (h, w))[on]
    return classes, offsets


def render_pair(src: Scene, tgt: Scene):
    return render(src), render(tgt)
