"""The Moderator: every check behind two calls, ``check_text`` and ``check_image``."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from darkroom.safety.abuse import AbuseClassifier, abuse_grade
from darkroom.safety.encoder import SentenceEncoder
from darkroom.safety.image import ImageDetector, NudeNetDetector, SkinToneDetector, nudenet_available
from darkroom.safety.lexicon import Lexicon
from darkroom.safety.policy import CATEGORIES, Verdict, check_tolerance, decide, empty_scores
from darkroom.safety.semantic import SemanticScorer

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_DETECTORS = ("auto", "nudenet", "fallback")

#: The verdict note when the image check runs in fallback mode.
FALLBACK_NOTE = "image check in fallback mode (skin-tone heuristic; NudeNet not installed): weaker detection"

#: A sexual grade at least this high next to a word marking a minor makes it sexual_minors.
MINORS_COMBO_SEXUAL = 0.3


class Moderator:
    """Moderation of prompts and images at a ``safety_tolerance`` level.

    Classifiers load lazily on first use (or all at once with :meth:`warm_up`) and are
    cached on the instance; create one per worker and reuse it. Calls may come from
    several threads: loading is guarded by locks and inference holds no shared state.

    Args:
        image_detector: ``"nudenet"`` (raise ImportError at construction if the extra is
            missing), ``"fallback"`` (the skin-tone heuristic) or ``"auto"`` (NudeNet if
            installed, else the fallback, with a warning logged).
        encoder: the sentence encoder to use; pass the worker's shared one so the model
            loads once. Default: a private one.
    """

    def __init__(self, *, image_detector: str = "auto", encoder: SentenceEncoder | None = None) -> None:
        if image_detector not in IMAGE_DETECTORS:
            raise ValueError(f"image_detector must be one of {', '.join(IMAGE_DETECTORS)}, got {image_detector!r}")
        if image_detector == "nudenet" and not nudenet_available():
            raise ImportError("image_detector='nudenet' needs the optional extra: pip install 'darkroom[nudenet]'")
        use_nudenet = image_detector == "nudenet" or (image_detector == "auto" and nudenet_available())
        self.image: ImageDetector = NudeNetDetector() if use_nudenet else SkinToneDetector()
        if not use_nudenet:
            logger.warning("%s", FALLBACK_NOTE)
        self.encoder = encoder or SentenceEncoder()
        self._lock = threading.Lock()
        self._lexicon: Lexicon | None = None
        self.semantic = SemanticScorer(self.encoder)
        self.abuse = AbuseClassifier()

    @property
    def image_mode(self) -> str:
        """``"full"`` with NudeNet, ``"fallback"`` with the skin-tone heuristic."""
        return self.image.mode

    @property
    def lexicon(self) -> Lexicon:
        if self._lexicon is None:
            with self._lock:
                if self._lexicon is None:
                    self._lexicon = Lexicon.load()
        return self._lexicon

    def import_modules(self) -> None:
        """Import what loading the classifiers imports, and nothing that needs a model read
        (profanity-check's classifier, which comes with its module, aside): about half a second,
        all of it holding the GIL. Call it before ``warm_up`` runs in a thread of its own beside
        another thread that imports other packages (a worker loading its model): the loads then
        import nothing, so the two threads never import modules of one package at once, which
        Python 3.11 can answer with ``_DeadlockError`` in either thread (CPython gh-83065)."""
        self.lexicon
        self.encoder.import_modules()
        self.abuse.load()
        if isinstance(self.image, NudeNetDetector):
            self.image.import_modules()

    def warm_up(self) -> None:
        """Load every classifier now (a worker calls this at start, off the request path)."""
        self.lexicon
        self.semantic.load()
        self.abuse.load()
        if isinstance(self.image, NudeNetDetector):
            self.image.load()

    def text_scores(self, text: str) -> tuple[dict[str, float], dict[str, str]]:
        """Per-category grades of ``text`` and what produced each (the max over all checks)."""
        scores = empty_scores()
        evidence: dict[str, str] = {}
        if not text.strip():
            return scores, evidence
        lexical = self.lexicon.match(text)
        semantic = self.semantic.score(text)
        abuse = abuse_grade(self.abuse.probability(text))
        for source in (lexical, semantic):
            for category in CATEGORIES:
                if source.scores[category] > scores[category]:
                    scores[category] = source.scores[category]
                    evidence[category] = source.evidence[category]
        if abuse > scores["hate"]:
            scores["hate"] = abuse
            evidence["hate"] = f"profanity-check: offensive language (grade {abuse:.2f})"
        if lexical.minors and scores["sexual"] >= MINORS_COMBO_SEXUAL and scores["sexual_minors"] < 0.95:
            scores["sexual_minors"] = 0.95
            evidence["sexual_minors"] = f"sexual content ({evidence['sexual']}) with a word marking a minor"
        return scores, evidence

    def check_text(self, text: str, tolerance: int) -> Verdict:
        """Judge a prompt (or an upsampled prompt) at ``tolerance`` (0..6; ValueError otherwise)."""
        check_tolerance(tolerance)
        scores, evidence = self.text_scores(text)
        return decide(scores, tolerance, mode="full", evidence=evidence)

    def check_image(self, image: Image.Image, tolerance: int) -> Verdict:
        """Judge an input or generated image at ``tolerance``; ``mode`` says which detector ran."""
        check_tolerance(tolerance)
        graded = self.image.grade(image)
        notes = [FALLBACK_NOTE] if self.image.mode == "fallback" else []
        return decide(graded.scores, tolerance, mode=self.image.mode, evidence=graded.evidence, notes=notes)
