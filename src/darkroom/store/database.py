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
their WHERE on the latest row version, the claim locks with ``FOR UPDATE SKIP LOCKED``, and
a submit locks its API key's row (``keys.lock_key``) so that one key's limit checks and
idempotency lookups cannot interleave. Its pool is sized by settings (``db_pool_size``,
``db_max_overflow``, ``db_pool_timeout_s``) and pings a connection before handing it out,
so connections that died in a server restart are replaced at checkout. A transaction that
the server drops midway still fails; ``is_transient`` says which failures are worth running
the whole transaction again for, and ``run_write`` tells a failure before COMMIT (safe to
re-run) from a failure of the COMMIT itself (``CommitUncertain``: it may have been applied).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

if TYPE_CHECKING:  # imported when a migration has to run: alembic (with mako) costs ~0.5 s to import
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# How long (ms) a SQLite writer waits for the write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Key of the PostgreSQL advisory lock that serializes concurrent migrations ("darkroom").
_PG_MIGRATE_LOCK = 0x6461726B726F6F6D

# Execution option read by the begin hook: how a SQLite transaction starts.
_BEGIN_OPTION = "darkroom_sqlite_begin"

T = TypeVar("T")


def create_engine(
    url: str,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pool_timeout: float | None = None,
    **kwargs: Any,
) -> sa.Engine:
    """Build the engine for ``url``; on SQLite, install the pragmas and begin hook.

    ``pool_size``, ``max_overflow`` and ``pool_timeout`` (None: SQLAlchemy's default) size
    the connection pool of a server database; SQLite ignores them and keeps SQLAlchemy's
    pool (one file, no server to spare connections for). Server databases always get
    ``pool_pre_ping``: a pooled connection that died (a restart, a failover, an idle
    timeout) is replaced at checkout instead of failing the caller's first statement.
    Extra keyword arguments go to :func:`sqlalchemy.create_engine`.
    """
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        pool = {name: value for name, value in (("pool_size", pool_size), ("max_overflow", max_overflow),
                                                ("pool_timeout", pool_timeout)) if value is not None}
        return sa.create_engine(sa_url, pool_pre_ping=True, **pool, **kwargs)

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
            if not conn.invalidated:  # a dropped connection has nothing to roll back; keep the first error
                conn.rollback()


class CommitUncertain(Exception):
    """The COMMIT was sent and failed with a transient error (``__cause__``): the connection
    broke before the server's answer arrived, so the transaction may or may not have been
    applied. Running it again could apply it twice; the caller must not retry blindly."""


def is_transient(exc: BaseException, dialect: str) -> bool:
    """Whether running the failed transaction again, from the start, may succeed.

    True for a connection the driver reported dead (``connection_invalidated``: the server
    restarted, failed over, or terminated the session) and, on a server database, for
    ``OperationalError`` and ``InterfaceError``: cannot connect, the server is starting or
    shutting down, a deadlock or serialization failure (the server rolled the transaction
    back). False for SQLite's errors: there is no server to come back, and a writer has
    already waited out ``SQLITE_BUSY_TIMEOUT_MS`` before "database is locked".
    """
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    return dialect != "sqlite" and isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))


def run_write(engine: sa.Engine, body: Callable[[sa.Connection], T]) -> T:
    """``body(conn)`` in a write transaction, committed on success; return what it returned.

    A transient failure of the COMMIT itself is raised as ``CommitUncertain``; any failure
    before it (connecting, BEGIN, the statements) is raised as it is and left nothing
    behind, since the server never received a COMMIT: the caller may run the whole unit again.
    """
    committing = False
    try:
        with write_transaction(engine) as conn:
            result = body(conn)
            committing = True  # leaving the block sends COMMIT
    except sa.exc.DBAPIError as exc:
        if committing and is_transient(exc, engine.dialect.name):
            raise CommitUncertain(f"COMMIT failed, the transaction may or may not be applied: {exc}") from exc
        raise
    return result


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config built in code: no alembic.ini is needed, in a checkout or installed."""
    from alembic.config import Config

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

    A database already at the newest revision (every start but the first) is found so with
    one query, without importing alembic.
    """
    if _at_head(engine):
        return
    from alembic import command

    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATE_LOCK})
        command.upgrade(alembic_config(conn), "head")


def head_revision() -> str | None:
    """The newest migration's revision, read from the files' ``revision`` and ``down_revision``
    (no alembic import); None unless there is exactly one head."""
    revisions: set[str] = set()
    parents: set[str | None] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        values = {}
        for node in ast.parse(path.read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision") and node.value:
                values[target.id] = ast.literal_eval(node.value)
        revisions.add(values["revision"])
        down = values.get("down_revision")
        parents.update(down if isinstance(down, (tuple, list)) else [down])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(engine: sa.Engine) -> bool:
    """Whether the schema is at ``head_revision()`` already (False when in doubt: alembic decides)."""
    head = head_revision()
    with engine.connect() as conn:
        if head is None or not sa.inspect(conn).has_table("alembic_version"):
            return False
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [head]


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other backends and in-memory databases."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite" or sa_url.database in (None, "", ":memory:"):
        return None
    return Path(sa_url.database)
