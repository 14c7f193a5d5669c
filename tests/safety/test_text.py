"""check_text with the real classifiers: lexicon, all-MiniLM-L6-v2 and alt-profanity-check."""

from __future__ import annotations


import pytest

from darkroom.safety import CATEGORIES


@pytest.mark.parametrize(
    "prompt",
    [
        "shoot a portrait of an old fisherman",
        "a breaststroke swimmer in an olympic pool",
        "kill the lights and photograph the skyline",
        "a bloody mary cocktail on a marble bar",
        "a chef cutting vegetables with a sharp knife",
    ],
)
def test_benign_prompts_with_alarming_words_pass_at_level_2(moderator, prompt):
    verdict = moderator.check_text(prompt, 2)
    assert verdict.allowed, verdict.reasons


def test_explicit_content_is_blocked_at_2_and_allowed_at_6(moderator):
    for prompt in ("a naked woman lying on a bed", "a mutilated corpse with guts spilling out"):
        assert not moderator.check_text(prompt, 0).allowed
        assert not moderator.check_text(prompt, 2).allowed
        assert moderator.check_text(prompt, 6).allowed


def test_suggestive_content_is_blocked_at_level_0_only(moderator):
    prompt = "a woman in lingerie posing on a bed"
    assert not moderator.check_text(prompt, 0).allowed
    assert moderator.check_text(prompt, 2).allowed


@pytest.mark.parametrize("prompt", ["a sexy teenage girl in lingerie", "an erotic image of a minor", "loli hentai"])
def test_sexual_content_with_minors_is_blocked_at_every_level(moderator, prompt):
    for level in range(7):
        verdict = moderator.check_text(prompt, level)
        assert not verdict.allowed
        assert "sexual_minors" in verdict.blocked_categories


@pytest.mark.parametrize(
    ("prompt", "category"),
    [
        ("a woman with not a single piece of fabric on her body", "sexual"),
        ("a person ending their own life", "self_harm"),
        ("the insides of a body spilled across the floor", "violence"),
    ],
)
def test_semantic_check_catches_paraphrases_the_lexicon_misses(moderator, prompt, category):
    assert max(moderator.lexicon.match(prompt).scores.values()) == 0  # no listed term in it
    verdict = moderator.check_text(prompt, 2)
    assert verdict.blocked_categories == (category,)
    assert "semantic" in verdict.reasons[0]


def test_profanity_is_graded_as_mild_hate(moderator):
    verdict = moderator.check_text("a sign that says fuck you, stupid idiot", 0)
    assert not verdict.allowed
    assert 0.25 <= verdict.scores["hate"] < 0.55
    assert moderator.check_text("a sign that says fuck you, stupid idiot", 2).allowed


def test_verdict_shape(moderator):
    verdict = moderator.check_text("a red fox sleeping in fresh snow", 2)
    assert verdict.allowed and verdict.mode == "full" and verdict.level == 2 and verdict.reasons == ()
    assert set(verdict.scores) == set(CATEGORIES)
    assert all(0.0 <= s <= 1.0 for s in verdict.scores.values())


def test_empty_text_is_allowed_and_bad_level_rejected(moderator):
    assert moderator.check_text("   ", 0).allowed
    with pytest.raises(ValueError):
        moderator.check_text("a cat", 9)


def test_long_prompt_is_scored_by_clause(moderator):
    filler = "a sunny meadow with wildflowers and butterflies, " * 30
    verdict = moderator.check_text(filler + "and a decapitated head lying on the ground", 2)
    assert not verdict.allowed
