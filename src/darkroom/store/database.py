"""Engine construction, per-connection SQLite settings, transactions and migrations.

SQLite is the default backend: one file, WAL mode (readers never block the writer),
``synchronous=FULL`` (a committed request survives a power cut) and a busy timeout so
concurrent writers queue instead of failing. Every write transaction starts with
``BEGIN IMMEDIATE``: it takes the database's single write lock up front, so a
read-then-write transaction (the claim) cannot be overtaken between its read and its
write, and a writer waits its turn under ``busy_timeout`` instead of failing with
SQLITE_BUSY when it tries to upgrade a read lock. Reads use a plain deferred ``BEGIN``
and run alongside the writer.

PostgreSQL (``postgresql+psycopg://``) runs at READ COMMITTED: guarded UPDATEs re-check
their WHERE on the latest row version, and the claim locks with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# How long (ms) a SQLite writer waits for the write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Key of the PostgreSQL advisory lock that serializes concurrent migrations ("darkroom").
_PG_MIGRATE_LOCK = 0x6461726B726F6F6D

# Execution option read by the begin hook: how a SQLite transaction starts.
_BEGIN_OPTION = "darkroom_sqlite_begin"


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    """Build the engine for ``url``; on SQLite, install the pragmas and begin hook.

    Extra keyword arguments go to :func:`sqlalchemy.create_engine`.
    """
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return sa.create_engine(sa_url, pool_pre_ping=True, **kwargs)

    connect_args = kwargs.pop("connect_args", {})
    # The pool hands a connection to one thread at a time; the API uses a thread pool.
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = sa.create_engine(sa_url, connect_args=connect_args, **kwargs)
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from Python's sqlite3 module (it would BEGIN lazily,
    # DEFERRED, only before DML); the begin hook below issues BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")  # persistent, but cheap to re-assert
        cursor.execute("PRAGMA synchronous = FULL")  # per connection: fsync the WAL on commit
        cursor.execute("PRAGMA foreign_keys = ON")  # per connection, off by default
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def writer(engine: sa.Engine) -> sa.Engine:
    """A view of ``engine`` (same pool) whose transactions start with BEGIN IMMEDIATE on SQLite."""
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that may write: committed on success, rolled back on error."""
    with writer(engine).begin() as conn:
        yield conn


@contextmanager
def read_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-only transaction (a consistent snapshot on SQLite WAL)."""
    with engine.connect() as conn:
        try:
            yield conn
        finally:
            conn.rollback()


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config built in code: no alembic.ini is needed, in a checkout or installed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: sa.Engine) -> None:
    """Upgrade the schema to the newest revision. Idempotent.

    Safe when several processes start at once: the whole upgrade runs in one transaction
    that first takes a lock (SQLite: the write lock, via BEGIN IMMEDIATE; PostgreSQL: a
    transaction-scoped advisory lock), so the second process waits, then finds the
    schema at head and does nothing. Both backends have transactional DDL here, so a
    failed migration leaves nothing half-applied.
    """
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATE_LOCK})
        command.upgrade(alembic_config(conn), "head")


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other backends and in-memory databases."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite" or sa_url.database in (None, "", ":memory:"):
        return None
    return Path(sa_url.database)
