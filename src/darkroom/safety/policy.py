"""Categories, grades and what each ``safety_tolerance`` level blocks.

Every check produces a grade in 0..1 per category; a level blocks a category once its
grade reaches that level's threshold. Grades are on one scale for every source:

    0.00-0.24  nothing of note
    0.25-0.39  suggestive / mild      (lingerie, a bar fight, a joint)
    0.40-0.54  moderate               (partial nudity, blood, petty crime)
    0.55-0.89  explicit / graphic     (nudity, sex, gore, hate symbols, self-harm, hard drugs)
    0.90-1.00  never allowed          (sexual violence, calls for genocide, suicide guides,
                                       weapons instructions)

Sexual content involving minors has its own, low threshold at every level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("sexual", "sexual_minors", "violence", "hate", "self_harm", "illegal")

MIN_TOLERANCE = 0
MAX_TOLERANCE = 6
DEFAULT_TOLERANCE = 2

#: Block threshold per level for every category but ``sexual_minors``.
LEVEL_THRESHOLDS: tuple[float, ...] = (0.25, 0.40, 0.55, 0.65, 0.75, 0.85, 0.90)
#: ``sexual_minors`` blocks from this grade at every level.
MINORS_THRESHOLD = 0.30


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check.

    Attributes:
        allowed: False when any category reached its threshold at ``level``.
        level: the ``safety_tolerance`` it was judged at.
        scores: category -> grade (0..1), every category of :data:`CATEGORIES`.
        reasons: one line per blocking category (empty when allowed), then notes.
        mode: ``"full"``, or ``"fallback"`` when the image check ran without NudeNet.
    """

    allowed: bool
    level: int
    scores: dict[str, float]
    reasons: tuple[str, ...]
    mode: str

    @property
    def blocked_categories(self) -> tuple[str, ...]:
        return tuple(c for c in CATEGORIES if self.scores.get(c, 0.0) >= threshold(c, self.level))


def check_tolerance(tolerance: int) -> int:
    """Return ``tolerance`` if it is a valid level; raises ValueError otherwise."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int):
        raise ValueError(f"safety_tolerance must be an integer, got {tolerance!r}")
    if not MIN_TOLERANCE <= tolerance <= MAX_TOLERANCE:
        raise ValueError(f"safety_tolerance must be {MIN_TOLERANCE}..{MAX_TOLERANCE}, got {tolerance}")
    return tolerance


def threshold(category: str, level: int) -> float:
    """The grade from which ``category`` is blocked at ``level``."""
    if category == "sexual_minors":
        return MINORS_THRESHOLD
    return LEVEL_THRESHOLDS[level]


def empty_scores() -> dict[str, float]:
    return {c: 0.0 for c in CATEGORIES}


def decide(
    scores: Mapping[str, float],
    level: int,
    *,
    mode: str = "full",
    evidence: Mapping[str, str] | None = None,
    notes: Iterable[str] = (),
) -> Verdict:
    """Judge graded ``scores`` at ``level``.

    Args:
        scores: category -> grade; missing categories count as 0.
        level: a ``safety_tolerance`` (validated).
        mode: copied into the verdict.
        evidence: category -> what produced its grade, quoted in the reasons.
        notes: extra lines appended to the reasons (e.g. the fallback warning).
    """
    check_tolerance(level)
    full = empty_scores()
    for category, grade in scores.items():
        if category not in full:
            raise ValueError(f"unknown moderation category {category!r}")
        full[category] = round(min(1.0, max(0.0, float(grade))), 3)
    evidence = evidence or {}
    reasons = []
    for category in CATEGORIES:
        limit = threshold(category, level)
        if full[category] >= limit:
            why = f" ({evidence[category]})" if category in evidence else ""
            reasons.append(f"{category} {full[category]:.2f} >= {limit:.2f}{why}")
    return Verdict(allowed=not reasons, level=level, scores=full, reasons=(*reasons, *notes), mode=mode)
