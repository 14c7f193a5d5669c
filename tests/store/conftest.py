"""Store fixtures: every store test runs against a real SQLite file and a real PostgreSQL 15.

PostgreSQL: one throwaway cluster per test session (``initdb`` + ``pg_ctl`` from PATH,
or from DARKROOM_TEST_PG_BIN), in a temp dir, listening on a free loopback port, fsync
off; each test gets a fresh database in it. initdb refuses to run as root, so under
root the cluster runs as the user DARKROOM_TEST_PG_USER (default ``postgres``, else
``nobody``) and its directory is chowned to that user.

If the cluster cannot start the PostgreSQL tests FAIL (a missing database must not look
like a pass); set DARKROOM_TEST_SKIP_PG=1 to skip them instead. Deselect them with
``-m "not postgres"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from darkroom.store import Store
from darkroom.store.tables import metadata
from darkroom.testing.postgres import PostgresCluster

BACKENDS = ["sqlite", "postgresql"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the throwaway PostgreSQL cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Marked here rather than in BACKENDS: this conftest is imported before its
    # pytest_configure has registered the marker.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "postgresql":
            item.add_marker("postgres")


@pytest.fixture(scope="session")
def pg_store_url(pg_cluster: PostgresCluster) -> str:
    """One migrated PostgreSQL database that the ``store`` fixture empties before each test
    (creating a database per test costs ~0.25 s, emptying this one ~5 ms)."""
    url = pg_cluster.new_database()
    store = Store(url)
    store.migrate()
    store.close()
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, unmigrated database: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'darkroom.db'}"
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty Store: a fresh SQLite file, or the shared PostgreSQL database emptied."""
    if backend == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'darkroom.db'}")
        s.migrate()
    else:
        s = Store(request.getfixturevalue("pg_store_url"))
        with s._write() as conn:
            for table in reversed(metadata.sorted_tables):  # children before parents (FKs)
                conn.execute(table.delete())
    yield s
    s.close()


@pytest.fixture
def key_id(store: Store) -> str:
    key, _ = store.create_key("alice")
    return key.id


@pytest.fixture
def other_key_id(store: Store) -> str:
    key, _ = store.create_key("bob")
    return key.id
