"""The offline enhancer, with the real sentence encoder."""

from __future__ import annotations

import re

import pytest

from darkroom.prompts import MAX_PROMPT_CHARS, PromptUpsampler, truncate
from darkroom.prompts.general import EDIT_SUFFIX, medium_of
from darkroom.prompts.shapes import COLOURS, POSITIONS, SHAPES, SIZES


@pytest.fixture(scope="module")
def upsampler() -> PromptUpsampler:
    from darkroom.safety import SentenceEncoder

    return PromptUpsampler(encoder=SentenceEncoder())


PROMPTS = [
    "a red fox sleeping in fresh snow",
    "a bowl of ramen with a soft boiled egg",
    "a futuristic city with flying cars",
    "an old library with spiral staircases",
    "a watercolor painting of a hummingbird",
]


def test_same_seed_same_prompt(upsampler):
    for prompt in PROMPTS:
        first = upsampler.upsample(prompt, seed=7)
        assert first == upsampler.upsample(prompt, seed=7)
        assert first.source == "offline" and first.fallback_reason is None
        assert first.prompt.startswith(prompt[0].upper() + prompt[1:])
        assert len(first.prompt) > len(prompt) + 40


def test_seeds_vary_the_choice(upsampler):
    outputs = {upsampler.upsample(p, seed=s).prompt for p in PROMPTS for s in range(6)}
    assert len(outputs) > len(PROMPTS)


def test_descriptors_follow_the_content(upsampler):
    food = upsampler.upsample("a stack of pancakes with blueberries and maple syrup", seed=1).prompt
    assert "food photography" in food or "flat-lay" in food
    logo = upsampler.upsample("a logo of a mountain and a sun, flat design", seed=1).prompt
    assert "Photorealistic" not in logo  # an illustration gets no camera talk


def test_slots_the_prompt_already_covers_are_left_alone(upsampler):
    out = upsampler.upsample("a lighthouse at sunset, close-up, oil painting", seed=3).prompt
    assert "light" not in out.split(".", 1)[1].lower()  # no lighting sentence added
    assert medium_of("an oil painting of a boat") == "painting"


def test_edit_instructions_keep_the_rest_of_the_image(upsampler):
    assert upsampler.upsample("change her dress to red", seed=1).prompt == f"Change her dress to red. {EDIT_SUFFIX}"


def test_result_is_within_the_limit(upsampler):
    long_prompt = "a very detailed scene of a busy harbour " * 60
    out = upsampler.upsample(long_prompt, seed=1)
    assert len(out.prompt) <= MAX_PROMPT_CHARS
    assert truncate("word " * 1000).endswith("word")


def test_unknown_profile_is_rejected(upsampler):
    with pytest.raises(ValueError):
        upsampler.upsample("a cat", seed=1, profile="anime")


SHAPES_VOCABULARY = (
    set(SHAPES) | {s + "s" for s in SHAPES} | set(COLOURS) | set(SIZES)
    | {w for phrase in POSITIONS.values() for w in phrase.split()}
    | {"a", "an", "and", "on", "plain", "to", "gradient", "background", "one", "two", "three", "four", "above", "below"}
)


@pytest.mark.parametrize(
    "prompt",
    ["a red circle", "a blue star and a yellow heart", "three purple rings", "two small blue stars above a yellow heart"],
)
def test_shapes_world_adds_only_what_darkroom_mini_knows(upsampler, prompt):
    for seed in range(5):
        out = upsampler.upsample(prompt, seed=seed, profile="shapes-world")
        assert out == upsampler.upsample(prompt, seed=seed, profile="shapes-world")
        words = set(re.findall(r"[a-z]+", out.prompt))
        assert words <= SHAPES_VOCABULARY, words - SHAPES_VOCABULARY
        assert "background" in out.prompt
        assert any(size in out.prompt.split() for size in SIZES)


def test_shapes_world_keeps_what_the_prompt_says(upsampler):
    prompt = "a small orange square at the top and a large pink circle on a plain white background"
    assert upsampler.upsample(prompt, seed=4, profile="shapes-world").prompt == prompt
    single = upsampler.upsample("a green triangle", seed=2, profile="shapes-world").prompt
    assert any(position in single for position in POSITIONS.values())
