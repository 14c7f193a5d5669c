"""check_image on real pictures shipped by scikit-image, through NudeNet and the fallback.

No sample image is nude, so the mapping from grades to verdicts is shown with NudeNet's
own false positive on scikit-image's colour wheel (it reports BUTTOCKS_EXPOSED at ~0.83),
and with a close-up crop of the astronaut's face for the skin-tone fallback.
"""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from darkroom.safety import Moderator
from darkroom.safety import moderator as moderator_module
from darkroom.safety.image import NUDENET_GRADES, SkinToneDetector, grade_detections, nudenet_available

skimage_data = pytest.importorskip("skimage.data")
needs_nudenet = pytest.mark.skipif(not nudenet_available(), reason="the optional nudenet extra is not installed")


def sample(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


def face_close_up() -> Image.Image:
    return sample("astronaut").crop((170, 60, 260, 170)).resize((256, 256))


def levels_blocked(mod: Moderator, image: Image.Image) -> set[int]:
    return {level for level in range(7) if not mod.check_image(image, level).allowed}


@pytest.fixture(scope="module")
def nudenet_moderator(encoder) -> Moderator:
    if not nudenet_available():
        pytest.skip("the optional nudenet extra is not installed")
    return Moderator(image_detector="nudenet", encoder=encoder)


@pytest.fixture(scope="module")
def fallback_moderator(encoder) -> Moderator:
    return Moderator(image_detector="fallback", encoder=encoder)


@needs_nudenet
def test_nudenet_passes_an_ordinary_portrait(nudenet_moderator):
    graded = nudenet_moderator.image.grade(sample("astronaut"))
    assert any(d.startswith("nudenet FACE_FEMALE") for d in graded.details)  # the detector really ran
    assert levels_blocked(nudenet_moderator, sample("astronaut")) == set()
    verdict = nudenet_moderator.check_image(sample("astronaut"), 0)
    assert verdict.mode == "full" and verdict.scores["sexual"] == 0.0


@needs_nudenet
def test_nudenet_grade_maps_to_verdicts_across_levels(nudenet_moderator):
    wheel = sample("colorwheel")
    graded = nudenet_moderator.image.grade(wheel)
    assert graded.scores["sexual"] == NUDENET_GRADES["BUTTOCKS_EXPOSED"]  # explicit grade: 0.65
    assert levels_blocked(nudenet_moderator, wheel) == {0, 1, 2, 3}  # explicit: allowed from level 4
    verdict = nudenet_moderator.check_image(wheel, 2)
    assert verdict.blocked_categories == ("sexual",)
    assert "nudenet: BUTTOCKS_EXPOSED" in verdict.reasons[0]


def test_detection_grades():
    assert grade_detections([]).scores["sexual"] == 0
    exposed = [{"class": "FEMALE_GENITALIA_EXPOSED", "score": 0.9, "box": [0, 0, 1, 1]}]
    assert grade_detections(exposed).scores["sexual"] == 0.8
    weak = [{"class": "FEMALE_GENITALIA_EXPOSED", "score": 0.4, "box": [0, 0, 1, 1]}]
    assert grade_detections(weak).scores["sexual"] == pytest.approx(0.6)
    noise = [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.3, "box": [0, 0, 1, 1]}]
    assert grade_detections(noise).scores["sexual"] == 0
    covered = [{"class": "FEMALE_BREAST_COVERED", "score": 0.8, "box": [0, 0, 1, 1]}]
    assert grade_detections(covered).scores["sexual"] == 0.25  # suggestive: level 0 only


def test_fallback_grades_skin_regions_and_says_it_is_weaker(fallback_moderator):
    assert levels_blocked(fallback_moderator, sample("astronaut")) == set()
    assert levels_blocked(fallback_moderator, sample("rocket")) == set()
    # A frame filled with skin: strict up to the default level, never beyond level 2.
    assert levels_blocked(fallback_moderator, face_close_up()) == {0, 1, 2}
    verdict = fallback_moderator.check_image(face_close_up(), 2)
    assert verdict.mode == "fallback"
    assert any("fallback mode" in reason for reason in verdict.reasons)
    assert SkinToneDetector().grade(face_close_up()).details[0].startswith("fallback skin-tone")


def test_auto_falls_back_loudly_without_nudenet(monkeypatch, caplog, encoder):
    monkeypatch.setattr(moderator_module, "nudenet_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        mod = Moderator(image_detector="auto", encoder=encoder)
    assert mod.image_mode == "fallback"
    assert "fallback mode" in caplog.text
    with pytest.raises(ImportError, match=r"darkroom\[nudenet\]"):
        Moderator(image_detector="nudenet", encoder=encoder)
    with pytest.raises(ValueError):
        Moderator(image_detector="clip", encoder=encoder)


@needs_nudenet
def test_auto_uses_nudenet_when_installed(encoder):
    assert Moderator(image_detector="auto", encoder=encoder).image_mode == "full"
