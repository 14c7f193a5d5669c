from __future__ import annotations

import pytest

from darkroom.safety import CATEGORIES, LEVEL_THRESHOLDS, MINORS_THRESHOLD
from darkroom.safety.policy import check_tolerance, decide


def test_categories_are_the_stable_contract_names():
    assert CATEGORIES == ("sexual", "sexual_minors", "violence", "hate", "self_harm", "illegal")


def test_thresholds_loosen_with_the_level():
    assert len(LEVEL_THRESHOLDS) == 7
    assert list(LEVEL_THRESHOLDS) == sorted(LEVEL_THRESHOLDS)


@pytest.mark.parametrize(
    ("grade", "blocked_at"),
    [
        (0.3, {0}),  # suggestive: level 0 only
        (0.45, {0, 1}),  # moderate
        (0.7, {0, 1, 2, 3}),  # explicit: blocked at the default level, allowed at the permissive end
        (0.95, set(range(7))),  # never allowed
        (0.1, set()),
    ],
)
def test_grades_map_to_levels(grade, blocked_at):
    for level in range(7):
        verdict = decide({"violence": grade}, level)
        assert verdict.allowed == (level not in blocked_at), level


def test_sexual_minors_is_blocked_at_every_level():
    for level in range(7):
        verdict = decide({"sexual_minors": MINORS_THRESHOLD}, level)
        assert not verdict.allowed
        assert verdict.blocked_categories == ("sexual_minors",)


def test_verdict_lists_every_category_and_explains_blocks():
    verdict = decide({"hate": 0.7}, 2, evidence={"hate": "lexicon: 'x'"})
    assert set(verdict.scores) == set(CATEGORIES)
    assert verdict.reasons == ("hate 0.70 >= 0.55 (lexicon: 'x')",)
    assert verdict.mode == "full" and verdict.level == 2


@pytest.mark.parametrize("bad", [-1, 7, 2.0, "2", True, None])
def test_tolerance_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError):
        check_tolerance(bad)


def test_unknown_category_is_rejected():
    with pytest.raises(ValueError):
        decide({"spam": 1.0}, 2)
