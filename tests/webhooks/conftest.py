"""Webhook fixtures: a migrated store on SQLite and on PostgreSQL, a key, and requests that end.

PostgreSQL reuses the throwaway-cluster helper of ``tests/store/conftest.py`` (loaded by
path, so that file stays as it is); same rules: it fails if the cluster cannot start,
unless DARKROOM_TEST_SKIP_PG=1.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkroom.domain import Request, SubmitOptions
from darkroom.store import Store
from darkroom.store.tables import metadata

from _webhook_helpers import HOOK, T0, Submit


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the throwaway PostgreSQL cluster")


def _store_helpers():
    path = Path(__file__).resolve().parents[1] / "store" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_darkroom_store_test_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def webhook_pg_url() -> Iterator[str]:
    helpers = _store_helpers()
    root: Path | None = None
    cluster = None
    try:
        user = helpers._run_as()
        root = Path(tempfile.mkdtemp(prefix="darkroom-pg-webhooks-"))
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = helpers.PostgresCluster(root=root, port=helpers._free_port(), user=user)
        cluster.start()
        url = cluster.new_database()
        s = Store(url)
        s.migrate()
        s.close()
    except Exception as exc:  # noqa: BLE001 - reported as a failure (or skip) below
        if cluster is not None:
            cluster.stop()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        message = f"could not start PostgreSQL for the webhook store tests: {exc}"
        if os.environ.get("DARKROOM_TEST_SKIP_PG") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    try:
        yield url
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'darkroom.db'}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty store on each backend."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'darkroom.db'}")
        s.migrate()
    else:
        s = Store(request.getfixturevalue("webhook_pg_url"))
        with s._write() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    yield s
    s.close()


@pytest.fixture
def key_id(store: Store) -> str:
    return store.create_key("alice")[0].id


@pytest.fixture
def submit(store: Store, key_id: str) -> Submit:
    """Queue a request for model ``m`` (with ``HOOK`` as its webhook unless told otherwise)."""

    def _submit(webhook_url: str | None = HOOK, secret: str | None = None, dialect: str = "requestqueue",
                now: float = T0) -> Request:
        options = SubmitOptions(webhook_url=webhook_url, webhook_secret=secret, dialect=dialect,
                                base_url="http://darkroom.test/")
        return store.submit_request(key_id, "m", {"prompt": "a red circle"}, options=options, now=now).request

    return _submit
