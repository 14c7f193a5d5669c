"""The offline enhancer's ``shapes-world`` profile, for darkroom-mini.

darkroom-mini knows only a world of coloured shapes: the words below, counts 1-4, two
sizes, five positions, a few relations and plain or gradient backgrounds. Anything else
would be noise to it, so this profile only fills in what the prompt leaves open: a size
for each shape, positions when none is given, and a background.
"""

from __future__ import annotations

import random
import re

SHAPES = ("circle", "square", "triangle", "star", "heart", "ring")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black")
SIZES = ("small", "large")
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
             "centre": "in the centre"}
COUNTS = ("a", "an", "one", "two", "three", "four", "1", "2", "3", "4")

_SIZE_WORDS = r"small|large|big|tiny|little|huge"
_COLOUR_WORDS = "|".join(COLOURS) + r"|grey|gray|brown|cyan|magenta"
_OBJECT = re.compile(
    rf"\b(?P<count>{'|'.join(COUNTS)})?\s*(?P<size1>{_SIZE_WORDS})?\s*(?P<colour>{_COLOUR_WORDS})?\s*"
    rf"(?P<size2>{_SIZE_WORDS})?\s*(?P<shape>{'|'.join(SHAPES)})s?\b",
    re.IGNORECASE,
)
_PLACED = re.compile(r"\b(left|right|top|bottom|cent(?:re|er)|middle|above|below|under|beside|next to|"
                     r"corner|row)\b", re.IGNORECASE)
_BACKGROUND = re.compile(r"\bbackground\b", re.IGNORECASE)


def enhance_shapes(prompt: str, rng: random.Random) -> str:
    """Add sizes, positions and a background that ``prompt`` leaves open; nothing else."""
    text = " ".join(prompt.strip().rstrip(".").split())
    objects = list(_OBJECT.finditer(text))
    placed = bool(_PLACED.search(text))
    positions: list[str] = []
    if objects and not placed:
        if len(objects) == 1:
            positions = [rng.choice(list(POSITIONS.values()))]
        elif len(objects) == 2:
            positions = [POSITIONS[p] for p in rng.choice([("left", "right"), ("top", "bottom"), ("right", "left")])]
        elif len(objects) == 3:
            positions = [POSITIONS[p] for p in ("left", "centre", "right")]
    pieces = []
    cursor = 0
    for index, match in enumerate(objects):
        pieces.append(text[cursor:match.start()])
        phrase = match.group(0)
        if not (match.group("size1") or match.group("size2")):
            size = rng.choice(SIZES)
            # The size goes right before the colour, or before the shape if there is none.
            anchor = match.start("colour") if match.group("colour") else match.start("shape")
            offset = anchor - match.start()
            phrase = f"{phrase[:offset]}{size} {phrase[offset:]}"
        if index < len(positions):
            phrase = f"{phrase} {positions[index]}"
        pieces.append(phrase)
        cursor = match.end()
    pieces.append(text[cursor:])
    out = "".join(pieces).strip()
    if not _BACKGROUND.search(text):
        used = {m.group("colour").lower() for m in objects if m.group("colour")}
        spare = [c for c in COLOURS if c not in used] or list(COLOURS)
        if rng.random() < 0.5:
            out += f" on a plain {rng.choice(spare)} background"
        else:
            first, second = rng.sample(spare if len(spare) >= 2 else list(COLOURS), 2)
            article = "an" if first[0] in "aeiou" else "a"
            out += f" on {article} {first} to {second} gradient background"
    return out
