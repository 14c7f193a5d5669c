"""Image checks: NudeNet's detector when installed, else a documented skin-tone fallback.

Both grade the ``sexual`` category only; neither estimates age, gore or hate symbols
(see docs/safety.md).

- :class:`NudeNetDetector` (mode ``"full"``): the ``320n.onnx`` detector shipped by the
  optional ``nudenet`` package, run on onnxruntime. Each detected body part maps to a
  grade (:data:`NUDENET_GRADES`); the image takes the highest.
- :class:`SkinToneDetector` (mode ``"fallback"``): the share of the picture covered by
  its largest skin-coloured region. It cannot tell a face close-up from a nude, so it
  errs strict at levels 0-2 and never blocks at level 3 or above.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from darkroom.safety.policy import empty_scores

if TYPE_CHECKING:
    from PIL import Image

#: NudeNet class -> grade of a confident detection.
NUDENET_GRADES: dict[str, float] = {
    "FEMALE_GENITALIA_EXPOSED": 0.8,
    "MALE_GENITALIA_EXPOSED": 0.8,
    "ANUS_EXPOSED": 0.8,
    "FEMALE_BREAST_EXPOSED": 0.65,
    "BUTTOCKS_EXPOSED": 0.65,
    "FEMALE_GENITALIA_COVERED": 0.3,
    "ANUS_COVERED": 0.3,
    "BUTTOCKS_COVERED": 0.3,
    "FEMALE_BREAST_COVERED": 0.25,
    "BELLY_EXPOSED": 0.2,
    "MALE_BREAST_EXPOSED": 0.15,
    "ARMPITS_EXPOSED": 0.1,
}
#: Detections below this confidence are ignored; below CONFIDENT they earn 3/4 of the grade.
MIN_CONFIDENCE = 0.35
CONFIDENT = 0.5

#: Fallback: (share of the image in the largest skin region, grade), checked in order.
SKIN_GRADES: tuple[tuple[float, float], ...] = ((0.40, 0.6), (0.25, 0.45), (0.10, 0.3))


@dataclass(frozen=True)
class ImageGrade:
    scores: dict[str, float]
    evidence: dict[str, str]
    details: tuple[str, ...]  # every detection, for the verdict's reasons


class ImageDetector(Protocol):
    mode: str

    def grade(self, image: Image.Image) -> ImageGrade: ...


def nudenet_available() -> bool:
    """True when the optional ``nudenet`` package (and onnxruntime) can be imported."""
    try:
        import importlib.util

        return importlib.util.find_spec("nudenet") is not None and importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def grade_detections(detections: list[dict[str, Any]]) -> ImageGrade:
    """Map NudeNet detections (``{"class", "score", "box"}``) to category grades."""
    scores = empty_scores()
    evidence: dict[str, str] = {}
    details = []
    for det in sorted(detections, key=lambda d: -d["score"]):
        label, confidence = det["class"], float(det["score"])
        details.append(f"nudenet {label} {confidence:.2f}")
        base = NUDENET_GRADES.get(label, 0.0)
        if confidence < MIN_CONFIDENCE or base == 0.0:
            continue
        grade = base if confidence >= CONFIDENT else base * 0.75
        if grade > scores["sexual"]:
            scores["sexual"] = round(grade, 3)
            evidence["sexual"] = f"nudenet: {label} {confidence:.2f}"
    return ImageGrade(scores, evidence, tuple(details))


class NudeNetDetector:
    """NudeNet's ONNX detector, loaded on first use. Raises ImportError if not installed."""

    mode = "full"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._detector: Any = None

    def import_modules(self) -> None:
        """Import NudeNet (and onnxruntime) without creating its session."""
        import nudenet  # noqa: F401

    def load(self) -> None:
        if self._detector is not None:
            return
        with self._lock:
            if self._detector is None:
                from nudenet import NudeDetector

                self._detector = NudeDetector()

    def grade(self, image: Image.Image) -> ImageGrade:
        import numpy as np

        self.load()
        # NudeNet converts with COLOR_RGBA2BGR, so it must be given four channels.
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGBA")))
        with self._lock:  # one onnxruntime session, used by one thread at a time
            detections = self._detector.detect(pixels)
        return grade_detections(detections)


def skin_mask(image: Image.Image) -> Any:
    """Boolean mask of skin-coloured pixels (RGB rule of Kovac et al. AND a YCbCr box)."""
    import numpy as np

    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    rgb_rule = (r > 95) & (g > 40) & (b > 20) & (spread > 15) & (np.abs(r - g) > 15) & (r > g) & (r > b)
    ycbcr = np.asarray(image.convert("YCbCr"), dtype=np.int16)
    cb, cr = ycbcr[..., 1], ycbcr[..., 2]
    return rgb_rule & (cr >= 135) & (cr <= 180) & (cb >= 85) & (cb <= 135)


class SkinToneDetector:
    """The fallback image check: the largest skin-coloured region's share of the image."""

    mode = "fallback"

    def grade(self, image: Image.Image) -> ImageGrade:
        import numpy as np
        from scipy import ndimage

        small = image.copy()
        small.thumbnail((256, 256))
        mask = skin_mask(small)
        labels, count = ndimage.label(mask)
        largest = int(np.bincount(labels.ravel())[1:].max()) if count else 0
        share = largest / mask.size
        scores = empty_scores()
        evidence: dict[str, str] = {}
        for floor, grade in SKIN_GRADES:
            if share >= floor:
                scores["sexual"] = grade
                evidence["sexual"] = f"fallback skin-tone region {share:.0%} of the image"
                break
        details = (f"fallback skin-tone: largest region {share:.1%}, all skin {mask.mean():.1%}",)
        return ImageGrade(scores, evidence, details)
