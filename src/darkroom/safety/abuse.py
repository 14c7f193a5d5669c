"""Abusive-language check: ``alt-profanity-check`` (a linear SVM over a TF-IDF vocabulary).

Its probability of "offensive" feeds the ``hate`` category, capped at a suggestive
grade (:data:`MAX_GRADE`): profanity and insults alone are blocked at level 0 only;
hate that matters at higher levels comes from the lexicon and the semantic check.
"""

from __future__ import annotations

import threading
from typing import Any

#: Probabilities below FLOOR count for nothing; at CEILING the grade reaches MAX_GRADE.
FLOOR = 0.6
CEILING = 0.95
MAX_GRADE = 0.35


def abuse_grade(probability: float) -> float:
    """The ``hate`` grade earned by an offensive-language probability."""
    if probability < FLOOR:
        return 0.0
    return round(MAX_GRADE * min(1.0, (probability - FLOOR) / (CEILING - FLOOR)), 3)


class AbuseClassifier:
    """Lazily imported ``profanity_check`` (its model loads when the module is imported)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._predict: Any = None

    def load(self) -> None:
        if self._predict is not None:
            return
        with self._lock:
            if self._predict is None:
                from profanity_check import predict_prob

                self._predict = predict_prob

    def probability(self, text: str) -> float:
        """Probability that ``text`` is offensive (0..1)."""
        self.load()
        return float(self._predict([text])[0])
