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


@pytest.fixture
def one_torch_thread():
    """Two OpenMP threads thrash on a shared, busy 2-core box; one is as fast for short texts."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
