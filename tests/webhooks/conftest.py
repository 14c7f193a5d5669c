"""Webhook fixtures: a migrated store on SQLite and on PostgreSQL, a key, and requests that end.

PostgreSQL is a database in the session's throwaway cluster (``pg_cluster``); it fails if
the cluster cannot start, unless DARKROOM_TEST_SKIP_PG=1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from darkroom.domain import Request, SubmitOptions
from darkroom.store import Store
from darkroom.store.tables import metadata

from _webhook_helpers import HOOK, T0, Submit


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the throwaway PostgreSQL cluster")


@pytest.fixture(scope="session")
def webhook_pg_url(pg_cluster) -> str:  # noqa: ANN001 - darkroom.testing.postgres.PostgresCluster
    """A migrated database in the session's throwaway cluster (``pg_cluster``, tests/conftest.py)."""
    url = pg_cluster.new_database()
    s = Store(url)
    s.migrate()
    s.close()
    return url


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
