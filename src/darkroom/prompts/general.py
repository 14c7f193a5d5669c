"""The offline enhancer's ``general`` profile: composition, lighting, style and detail.

Each slot the prompt does not already cover gets one sentence from the curated library
(``data/descriptors.toml``): descriptors that fit the prompt's medium are ranked by the
sentence encoder's similarity between the prompt and each descriptor's ``fits`` text,
and a seeded draw picks among the best few (those close to the best). Same prompt, seed and library: same result.
"""

from __future__ import annotations

import random
import re
import threading
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from darkroom.safety.encoder import SentenceEncoder

SLOTS = ("composition", "lighting", "style", "detail")
#: The draw among each slot's best candidates, best first ...
DRAW_WEIGHTS = (0.5, 0.3, 0.2)
#: ... counting only those within this similarity of the best one.
DRAW_MARGIN = 0.06

# A slot is skipped when the prompt already says something of its kind.
_COVERED = {
    "composition": r"close-?up|wide shot|wide-angle|aerial|overhead|top-down|from above|low[- ]angle|"
    r"high[- ]angle|macro|symmetr|rule of thirds|centred|centered|full[- ]body|medium shot|framed",
    "lighting": r"\blight(?:ing|s)?\b|\blit\b|backlit|sunset|sunrise|golden hour|neon|glow|shadows?|"
    r"moonlight|sunlight|candlelight|dawn|dusk|overcast|chiaroscuro",
    "style": r"photo(?:graph|realistic)?|painting|watercolou?r|illustration|anime|render|cartoon|sketch|"
    r"drawing|pixel art|vector|cinematic|film|shot on|\blens\b",
    "detail": r"detailed|intricate|texture|high detail|8k|4k|sharp focus",
}
_MEDIA = {
    "painting": r"paint(?:ing|ed)|\boil\b|watercolou?r|acrylic|gouache|impressionis|canvas|fresco",
    "illustration": r"illustrat|cartoon|anime|manga|comic|vector|flat design|pixel art|logo|icon|"
    r"poster|sticker|storybook|line art|doodle|sketch|drawing",
    "render": r"\b3d\b|render|isometric|low[- ]poly|cgi|clay|blender|voxel",
}
_EDIT = re.compile(r"^\s*(?:please\s+)?(?:change|replace|make|add|remove|turn|convert|put|swap|transform|"
                   r"give|edit|recolou?r|erase|delete|insert|restyle)\b", re.IGNORECASE)
EDIT_SUFFIX = "Keep everything else in the image unchanged, with its original lighting, framing and style."


def medium_of(prompt: str) -> str:
    """``photo`` unless the prompt names a painting, an illustration or a render."""
    lowered = prompt.lower()
    for medium, pattern in _MEDIA.items():
        if re.search(pattern, lowered):
            return medium
    return "photo"


def is_edit_instruction(prompt: str) -> bool:
    """True for an instruction to edit an input image ("change her dress to red")."""
    return bool(_EDIT.match(prompt))


@dataclass(frozen=True)
class Descriptor:
    slot: str
    text: str
    fits: str
    media: tuple[str, ...]

    def suits(self, medium: str) -> bool:
        return "any" in self.media or medium in self.media


class GeneralEnhancer:
    """The ``general`` profile. Embeds the library once, on first use."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self._encoder = encoder
        self._lock = threading.Lock()
        data = tomllib.loads(resources.files("darkroom.prompts").joinpath("data/descriptors.toml").read_text())
        self.version = str(data["version"])
        self.descriptors = [
            Descriptor(slot, d["text"], d["fits"], tuple(d["media"])) for slot in SLOTS for d in data[slot]
        ]
        self._vectors = None

    def _library(self):  # noqa: ANN202 - numpy array, imported lazily
        if self._vectors is None:
            with self._lock:
                if self._vectors is None:
                    self._vectors = self._encoder.encode([d.fits for d in self.descriptors])
        return self._vectors

    def additions(self, prompt: str, rng: random.Random) -> list[str]:
        """One sentence per uncovered slot, in slot order."""
        library = self._library()
        query = self._encoder.encode([prompt])[0]
        # Rounded so that last-digit float noise across CPUs cannot reorder near-ties.
        similarity = [round(float(s), 3) for s in library @ query]
        medium = medium_of(prompt)
        lowered = prompt.lower()
        out = []
        for slot in SLOTS:
            if re.search(_COVERED[slot], lowered):
                continue
            ranked = sorted(
                (i for i, d in enumerate(self.descriptors) if d.slot == slot and d.suits(medium)),
                key=lambda i: (-similarity[i], i),
            )[: len(DRAW_WEIGHTS)]
            ranked = [i for i in ranked if similarity[i] >= similarity[ranked[0]] - DRAW_MARGIN]
            if ranked:
                pick = rng.choices(ranked, weights=DRAW_WEIGHTS[: len(ranked)])[0]
                out.append(self.descriptors[pick].text)
        return out

    def enhance(self, prompt: str, rng: random.Random) -> str:
        base = prompt.strip().rstrip(".")
        if not base:
            return prompt
        base = base[0].upper() + base[1:]
        if is_edit_instruction(prompt):
            return f"{base}. {EDIT_SUFFIX}"
        return ". ".join([base, *self.additions(prompt, rng)]) + "."
