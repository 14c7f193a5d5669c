"""A real ``darkroom serve`` on loopback, with the tiny models and two API keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkroom.testing.api import start_deployment


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    """One server with an in-process-started worker, shared by a module's tests."""
    dep = start_deployment(tmp_path_factory.mktemp("deploy"), tiny_models)
    yield dep
    dep.server.stop()


@pytest.fixture()
def fresh_deployment(tmp_path: Path, tiny_models: Path):
    """A server without a worker, for tests that control workers themselves."""
    dep = start_deployment(tmp_path, tiny_models, worker=False, DARKROOM_LEASE_S="3")
    yield dep
    dep.server.stop()
