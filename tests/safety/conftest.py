"""Real classifiers, loaded once per test session (the encoder takes a few seconds)."""

from __future__ import annotations

import pytest

from darkroom.safety import Moderator, SentenceEncoder


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    enc = SentenceEncoder()
    enc.load()
    return enc


@pytest.fixture(scope="session")
def moderator(encoder: SentenceEncoder) -> Moderator:
    mod = Moderator(image_detector="auto", encoder=encoder)
    mod.warm_up()
    return mod
