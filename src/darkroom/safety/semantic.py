"""Semantic check: sentence-encoder similarity to category descriptions.

Catches paraphrases the lexicon misses ("a person wearing nothing at all"). The prompt
is split into clauses; each clause, and the whole prompt, is compared with the unsafe
exemplars and the benign anchors of ``data/exemplars.toml``. A clause counts for a
category only when its nearest unsafe exemplar is nearer than every benign anchor;
its grade is the exemplar's, scaled by how strong the match is (see :func:`match_grade`).
Only each clause's nearest exemplar counts: categories compete, so adult sexual content
is not graded as ``sexual_minors`` for being near-ish to its descriptions; and a
``sexual_minors`` exemplar counts only on a strong match (>= HIGH), since the semantic
check is no judge of age (minors with sexual words are the lexicon's combo).
"""

from __future__ import annotations

import re
import threading
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from darkroom.safety.policy import CATEGORIES, empty_scores

if TYPE_CHECKING:
    import numpy as np

    from darkroom.safety.encoder import SentenceEncoder

#: A match below LOW counts for nothing; at HIGH or above it takes the exemplar's full grade.
LOW = 0.50
HIGH = 0.58
#: Weak matches keep this share of the grade at LOW, rising linearly to 1 at HIGH.
WEAK_SHARE = 0.5
#: Clauses shorter than this many words are not scored on their own (too little context).
MIN_CLAUSE_WORDS = 2
MAX_CLAUSES = 24

_CLAUSE_SPLIT = re.compile(r"[.;:!?\n,]+|\s+(?:and|while|but)\s+")


def match_grade(similarity: float, grade: float) -> float:
    """Grade earned by a match of ``similarity`` to an exemplar of ``grade``."""
    if similarity < LOW:
        return 0.0
    share = WEAK_SHARE + (1 - WEAK_SHARE) * min(1.0, (similarity - LOW) / (HIGH - LOW))
    return grade * share


def clauses(text: str) -> list[str]:
    """The whole text, then its clauses of at least MIN_CLAUSE_WORDS words (at most MAX_CLAUSES)."""
    text = " ".join(text.split())
    parts = [p.strip() for p in _CLAUSE_SPLIT.split(text)]
    out = [text]
    for part in parts:
        if len(part.split()) >= MIN_CLAUSE_WORDS and part not in out:
            out.append(part)
    return out[: MAX_CLAUSES + 1]


@dataclass(frozen=True)
class SemanticMatch:
    scores: dict[str, float]
    evidence: dict[str, str]


class SemanticScorer:
    """Scores texts against the packaged exemplars; embeds the exemplars once, on first use."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self._encoder = encoder
        self._lock = threading.Lock()
        self._ready = False
        data = tomllib.loads(resources.files("darkroom.safety").joinpath("data/exemplars.toml").read_text())
        self.version = str(data["version"])
        self._texts: list[str] = []
        self._categories: list[str] = []
        self._grades: list[float] = []
        for entry in data["unsafe"]:
            if entry["category"] not in CATEGORIES:
                raise ValueError(f"exemplars: unknown category {entry['category']!r}")
            for text in entry["texts"]:
                self._texts.append(text)
                self._categories.append(entry["category"])
                self._grades.append(float(entry["grade"]))
        self._benign_texts: list[str] = list(data["benign"]["texts"])

    def load(self) -> None:
        """Embed the exemplars (idempotent, thread-safe)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            import numpy as np

            self._unsafe = self._encoder.encode(self._texts)
            self._benign = self._encoder.encode(self._benign_texts)
            self._grade_arr = np.asarray(self._grades, dtype=np.float32)
            self._ready = True

    def similarities(self, text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Clauses of ``text``, their similarity to each unsafe exemplar and to each benign anchor."""
        self.load()
        parts = clauses(text)
        vectors = self._encoder.encode(parts)
        return parts, vectors @ self._unsafe.T, vectors @ self._benign.T

    def score(self, text: str) -> SemanticMatch:
        scores = empty_scores()
        evidence: dict[str, str] = {}
        if not text.strip():
            return SemanticMatch(scores, evidence)
        parts, unsafe, benign = self.similarities(text)
        benign_best = benign.max(axis=1)
        for row, part in enumerate(parts):
            col = next(
                (int(c) for c in unsafe[row].argsort()[::-1]
                 if self._categories[c] != "sexual_minors" or unsafe[row, c] >= HIGH),
                None,
            )
            if col is None:
                continue
            sim = float(unsafe[row, col])
            if sim >= LOW and sim > float(benign_best[row]):
                category = self._categories[col]
                grade = match_grade(sim, self._grades[col])
                if grade > scores[category]:
                    scores[category] = round(grade, 3)
                    evidence[category] = f"semantic {self.version}: {part[:60]!r} ~ {self._texts[col]!r} ({sim:.2f})"
        return SemanticMatch(scores, evidence)
