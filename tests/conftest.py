"""Shared fixtures: tiny random FLUX pipelines registered in a temporary model registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_REGISTRY = """
default = "tiny"

[models.tiny]
pipeline = "flux"
path = "{t2i}"
brief_description = "tiny random FLUX for tests"
[models.tiny.parameters]
steps = {{ default = 2, minimum = 1, maximum = 50 }}
[models.tiny.options]
native_area = 4096
max_sequence_length = 16

[models.tiny-edit]
pipeline = "flux-kontext"
path = "{kontext}"
brief_description = "tiny random FLUX Kontext for tests"
[models.tiny-edit.parameters]
steps = {{ default = 2, minimum = 1, maximum = 50 }}
guidance = {{ default = 3.5, edit_default = 1.5, minimum = 0.0, maximum = 20.0 }}
[models.tiny-edit.options]
native_area = 4096
max_sequence_length = 16

[models.tiny-full]
pipeline = "flux"
path = "{t2i}"
brief_description = "the tiny model at the full output size (no upscaler): for pixel comparisons"
[models.tiny-full.parameters]
steps = {{ default = 2, minimum = 1, maximum = 50 }}
[models.tiny-full.options]
max_sequence_length = 16

[models.tiny-slow]
pipeline = "flux"
path = "{t2i}"
brief_description = "the tiny model with many steps, to catch a request while it runs"
[models.tiny-slow.parameters]
steps = {{ default = 400, minimum = 1, maximum = 2000 }}
[models.tiny-slow.options]
native_area = 16384
max_sequence_length = 16
"""


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry file with ``tiny`` (text-to-image), ``tiny-edit`` (Kontext) and ``tiny-slow``."""
    from darkroom.testing.tiny_pipeline import build_tiny_flux

    root = tmp_path_factory.mktemp("tiny-models")
    t2i = build_tiny_flux(root / "tiny", kontext=False)
    kontext = build_tiny_flux(root / "tiny-kontext", kontext=True)
    registry = root / "models.toml"
    registry.write_text(TINY_REGISTRY.format(t2i=t2i, kontext=kontext))
    return registry


FAMILY_STEPS = 2


@pytest.fixture(scope="session")
def tiny_family_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry file with one tiny random-weight model per pipeline family that
    ``darkroom.testing.tiny_families`` builds: ``fam-<family>``, 2 steps, generating at 64x64."""
    from darkroom.testing.tiny_families import FAMILIES, build_tiny

    root = tmp_path_factory.mktemp("tiny-families")
    entries = []
    for family in FAMILIES:
        build_tiny(family, root / family)
        entries.append(f'[models.fam-{family}]\npipeline = "{family}"\npath = "{family}"\n'
                       f'license = "apache-2.0"\n'
                       f'[models.fam-{family}.parameters]\n'
                       f'steps = {{ default = {FAMILY_STEPS}, minimum = 1, maximum = 50 }}\n'
                       f'[models.fam-{family}.options]\nnative_area = 4096\n')
    registry = root / "models.toml"
    registry.write_text("\n".join(entries))
    return registry


@pytest.fixture(scope="session")
def pg_cluster():
    """A running throwaway PostgreSQL cluster for the session (``darkroom.testing.postgres``).

    If it cannot start, the PostgreSQL tests FAIL (a missing database must not look like a
    pass); DARKROOM_TEST_SKIP_PG=1 skips them instead. Deselect them with ``-m "not postgres"``.
    """
    from contextlib import ExitStack

    from darkroom.testing.postgres import throwaway_cluster

    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(throwaway_cluster())
        except Exception as exc:  # noqa: BLE001 - reported as a failure (or skip) below
            message = f"could not start PostgreSQL for the tests: {exc}"
            if os.environ.get("DARKROOM_TEST_SKIP_PG") == "1":
                pytest.skip(message)
            pytest.fail(message, pytrace=False)
        yield cluster


@pytest.fixture(scope="session")
def s3_server():
    """A running throwaway S3 server for the session: Ceph radosgw (``darkroom.testing.radosgw``).

    Started on first use. If it cannot start (no Ceph binaries: apt-get install radosgw
    ceph-mon ceph-osd), the S3 tests FAIL (a missing server must not look like a pass);
    DARKROOM_TEST_SKIP_S3=1 skips them instead. Deselect them with ``-m "not s3"``.
    """
    from contextlib import ExitStack

    from darkroom.testing.radosgw import running_radosgw

    with ExitStack() as stack:
        try:
            server = stack.enter_context(running_radosgw())
        except Exception as exc:  # noqa: BLE001 - reported as a failure (or skip) below
            message = f"could not start the radosgw S3 server for the tests: {exc}"
            if os.environ.get("DARKROOM_TEST_SKIP_S3") == "1":
                pytest.skip(message)
            pytest.fail(message, pytrace=False)
        print(f"radosgw started in {server.started_in_s:.1f}s at {server.endpoint_url}")
        yield server
