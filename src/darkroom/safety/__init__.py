"""Moderation of prompts and images, graded per category and judged per ``safety_tolerance``.

    moderator = Moderator(image_detector="auto")        # one per worker; loads lazily
    verdict = moderator.check_text(prompt, tolerance=2)
    if not verdict.allowed: ...                          # fail with input_moderated

Levels and grades: :mod:`darkroom.safety.policy`; the lexicon: ``data/lexicon.toml``;
the semantic exemplars: ``data/exemplars.toml``; the image detectors:
:mod:`darkroom.safety.image`. Nothing heavy is imported until a check runs.
"""

from darkroom.safety.encoder import SentenceEncoder
from darkroom.safety.moderator import IMAGE_DETECTORS, Moderator
from darkroom.safety.policy import (
    CATEGORIES,
    DEFAULT_TOLERANCE,
    LEVEL_THRESHOLDS,
    MAX_TOLERANCE,
    MIN_TOLERANCE,
    MINORS_THRESHOLD,
    Verdict,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_TOLERANCE",
    "IMAGE_DETECTORS",
    "LEVEL_THRESHOLDS",
    "MAX_TOLERANCE",
    "MINORS_THRESHOLD",
    "MIN_TOLERANCE",
    "Moderator",
    "SentenceEncoder",
    "Verdict",
]
