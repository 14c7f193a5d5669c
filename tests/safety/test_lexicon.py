from __future__ import annotations

import pytest

from darkroom.safety.lexicon import Lexicon, deobfuscate, normalise


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.load()


def test_packaged_lexicon_is_versioned(lexicon):
    assert lexicon.version.count(".") == 2


@pytest.mark.parametrize(
    "text",
    [
        "shoot a portrait of a dancer",
        "a breaststroke swimmer",
        "kill the lights",
        "a bloody mary cocktail",
        "grilled chicken breast",
        "a flat lay of nude lipstick",
        "a street market full of spices",  # "spic" must not match "spices"
        "a sex on the beach cocktail",
    ],
)
def test_safe_phrases_and_word_boundaries(lexicon, text):
    assert max(lexicon.match(text).scores.values()) == 0


@pytest.mark.parametrize("text", ["a n.u.d.e woman", "p0rn", "a NAKED man", "sexxxy lingerie", "nudé"])
def test_obfuscation_is_undone(lexicon, text):
    assert lexicon.match(text).scores["sexual"] >= 0.3


def test_normalise_and_deobfuscate():
    assert normalise("  Ńúdé  Ｐhoto ") == "nude photo"
    assert deobfuscate("p0rn s3x n.u.d.e") == "porn sex nude"
    assert deobfuscate("12-year-old") == "12-year-old"  # numbers alone are not leetspeak


def test_minor_with_anything_sexual_is_sexual_minors(lexicon):
    assert lexicon.match("a sexy teenage girl").scores["sexual_minors"] >= 0.9
    assert lexicon.match("a 14-year-old posing sexually").scores["sexual_minors"] >= 0.9
    assert lexicon.match("a teenage girl doing homework").scores["sexual_minors"] == 0
    assert lexicon.match("kids playing in a sprinkler").minors


def test_combos_raise_the_grade(lexicon):
    assert lexicon.match("a flyer calling to exterminate gay people").scores["hate"] >= 0.9
    assert lexicon.match("a poster saying all muslims are terrorists").scores["hate"] == 0.7
    assert lexicon.match("instructions for making a bomb").scores["illegal"] >= 0.9
    match = lexicon.match("a guide to killing yourself")
    assert match.scores["self_harm"] >= 0.9
    assert "encouraging or instructing self-harm" in match.evidence["self_harm"]


def test_malformed_lexicon_is_rejected():
    with pytest.raises(ValueError):
        Lexicon.parse({"version": "0", "safe": {"phrases": []}, "minors": {"words": ["kid"]},
                       "terms": [{"category": "spam", "grade": 0.5, "words": ["x"]}]})
