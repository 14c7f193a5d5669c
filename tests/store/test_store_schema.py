"""Schema, migrations and connection settings."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import _store_children
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from darkroom.domain import Status
from darkroom.errors import NotFound
from darkroom.settings import Settings
from darkroom.store import Store, database
from darkroom.store.tables import metadata


def _head() -> str | None:
    return ScriptDirectory.from_config(database.alembic_config()).get_current_head()


def _current_revision(store: Store) -> str | None:
    with store._engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migrate_is_idempotent(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini anywhere near: the config is built in code
    store = Store(db_url)
    store.migrate()
    store.migrate()
    assert _current_revision(store) == _head()
    assert {"api_keys", "requests", "workers", "alembic_version"} <= set(sa.inspect(store._engine).get_table_names())
    store.close()


def test_migrated_schema_matches_tables(store: Store) -> None:
    with store._engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


def test_status_check_lists_exactly_the_statuses(store: Store, key_id: str) -> None:
    migration = (database.MIGRATIONS_DIR / "versions" / "0001_initial.py").read_text()
    found = re.search(r"_STATUSES = \((.*?)\)", migration)
    assert found is not None
    listed = found.group(1)
    assert {s.strip(" '\"") for s in listed.split(",") if s.strip()} == {s.value for s in Status}
    request = store.insert_request(key_id, "m", {})
    with pytest.raises(sa.exc.IntegrityError), store._engine.begin() as conn:
        conn.execute(sa.text("UPDATE requests SET status = 'bogus' WHERE id = :id"), {"id": request.id})


def test_foreign_key_enforced(store: Store) -> None:
    with pytest.raises(NotFound) as raised:
        store.insert_request("no-such-key", "m", {})
    assert isinstance(raised.value.__cause__, sa.exc.IntegrityError)  # the database refused it


def test_concurrent_migrate_from_processes(db_url: str) -> None:
    ctx = _store_children.context()
    procs = [ctx.Process(target=_store_children.migrate, args=(db_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    store = Store(db_url)
    assert _current_revision(store) == _head()
    store.close()


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    store.migrate()
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == database.SQLITE_BUSY_TIMEOUT_MS
    store.close()
    # WAL is a property of the file: a plain connection sees it too.
    raw = sqlite3.connect(tmp_path / "x.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_sqlite_writes_begin_immediate(tmp_path: Path) -> None:
    """A write transaction holds the write lock from its first statement, so a
    read-then-write (the claim) cannot be overtaken between its read and its write."""
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    store.migrate()
    other = sqlite3.connect(tmp_path / "x.db", timeout=0, isolation_level=None)
    with store._write() as conn:
        conn.execute(sa.select(sa.func.count()).select_from(sa.table("requests")))  # a read only
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # released on commit
    other.execute("ROLLBACK")
    with store._read() as conn:  # reads do not take it
        conn.execute(sa.select(sa.func.count()).select_from(sa.table("requests")))
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    other.close()
    store.close()


def test_from_settings_creates_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nested" / "data")
    store = Store.from_settings(settings)
    store.migrate()
    assert store.backend == "sqlite"
    assert (tmp_path / "nested" / "data" / "darkroom.db").exists()
    store.close()


def test_repr_hides_password() -> None:
    store = Store("postgresql+psycopg://u:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in repr(store)
