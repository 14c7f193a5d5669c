"""Sample grid for the model card: all aspect ratios x several prompts, plus edits.

    python -m training.make_grid --model models/darkroom-mini --out docs/img/darkroom-mini-grid.png
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from training import build_pipeline as bp  # noqa: E402
from training import world  # noqa: E402
from training.evaluate import edit, generate  # noqa: E402

PROMPTS = [
    "a crimson ball above a navy box",
    "three small yellow stars on a black background",
    "a big green heart on the left",
    "a purple ring and a teal triangle on a cream to light blue gradient",
    "two pink squares and an orange circle",
]
EDITS = [
    ("a red circle left of a blue square on a white background", "make the red circle yellow"),
    ("a green star and a purple heart on a gray background", "remove the purple heart"),
    ("a big orange triangle on a mint background", "add a small blue ring on the right"),
    ("a teal ring on a cream background", "change the background to black"),
    ("a pink heart on the left on a lavender background", "move the pink heart to the right"),
]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/darkroom-mini")
    ap.add_argument("--out", default="docs/img/darkroom-mini-grid.png")
    ap.add_argument("--sample-1mp", default="docs/img/darkroom-mini-1mp.png")
    ap.add_argument("--cell", type=int, default=200, help="cell height in px")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from diffusers import FluxKontextPipeline

    from darkroom.engines.upscale import fit_size, upscale_to

    pipe = bp.load_pipeline(args.model)
    kpipe = FluxKontextPipeline.from_pipe(pipe)
    kpipe.set_progress_bar_config(disable=True)
    ch = args.cell
    rows = []
    first_1mp = None
    for asp, (W, H) in world.ASPECTS.items():
        row = []
        for i, p in enumerate(PROMPTS):
            img = generate(pipe, p, asp, seed=i)
            up = upscale_to(img, *fit_size(*(int(v) for v in asp.split(":"))))
            if first_1mp is None:
                first_1mp = up
            row.append(up.resize((max(1, round(ch * W / H)), ch), Image.LANCZOS))
        rows.append((asp, row))
    erow = []
    for i, (p, ins) in enumerate(EDITS):
        src = generate(pipe, p, "1:1", seed=100 + i)
        out = edit(kpipe, ins, src, seed=i)
        erow.append((ins, src.resize((ch, ch), Image.LANCZOS),
                     upscale_to(out, 1024, 1024).resize((ch, ch), Image.LANCZOS)))
    pad, lab = 6, 16
    width = max(sum(im.width for im in r) + pad * (len(r) + 1) for _, r in rows)
    width = max(width, len(EDITS) * (2 * ch + 3 * pad))
    height = lab + len(rows) * (ch + pad + lab) + (ch + pad + 2 * lab) + pad
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(grid)
    d.text((pad, 2), "darkroom-mini text-to-image (columns: " + " | ".join(PROMPTS) + ")", fill=(0, 0, 0))
    y = lab
    for asp, r in rows:
        d.text((pad, y), asp, fill=(0, 0, 0))
        x = pad
        for im in r:
            grid.paste(im, (x, y + lab))
            x += im.width + pad
        y += ch + pad + lab
    d.text((pad, y), "Kontext edits (source -> edited)", fill=(0, 0, 0))
    x = pad
    for ins, s, o in erow:
        d.text((x, y + lab), ins[:44], fill=(0, 0, 0))
        grid.paste(s, (x, y + 2 * lab))
        grid.paste(o, (x + ch + 2, y + 2 * lab))
        x += 2 * ch + 3 * pad
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    def _small(im):  # flat-colour images: a 256-colour palette keeps the repo small
        return im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)

    _small(grid).save(args.out, optimize=True)
    if args.sample_1mp and first_1mp is not None:
        _small(first_1mp).save(args.sample_1mp, optimize=True)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
