"""Wake-up fixtures: the PostgreSQL tests use the session's throwaway cluster (``pg_cluster``,
tests/conftest.py), each module a database of its own."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the throwaway PostgreSQL cluster")


@pytest.fixture(scope="module")
def pg_url(pg_cluster: Any) -> str:  # darkroom.testing.postgres.PostgresCluster
    """A fresh, empty database for one test module (NOTIFY is scoped to a database)."""
    return pg_cluster.new_database()
