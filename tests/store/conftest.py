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

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from darkroom.store import Store
from darkroom.store.tables import metadata

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


def _pg_bin(name: str) -> str:
    explicit = os.environ.get("DARKROOM_TEST_PG_BIN")
    if explicit:
        return str(Path(explicit) / name)
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found on PATH (set DARKROOM_TEST_PG_BIN)")
    return found


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    names = [os.environ["DARKROOM_TEST_PG_USER"]] if os.environ.get("DARKROOM_TEST_PG_USER") else ["postgres", "nobody"]
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {names} exists (initdb refuses root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresCluster:
    root: Path
    port: int
    user: pwd.struct_passwd | None
    _count: int = field(default=0)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(args, capture_output=True, text=True, cwd=self.root, timeout=60, **kwargs)

    def start(self) -> None:
        result = self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-U", "darkroom", "--auth=trust",
            "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        # Loopback TCP only, the socket in our own dir, and no fsync: a throwaway cluster.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=200"
        result = self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "30",
            "-o", options, "start",
        )  # fmt: skip
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{log}")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://darkroom@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=darkroom dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A running throwaway PostgreSQL cluster for the session (see the module docstring)."""
    root: Path | None = None
    cluster: PostgresCluster | None = None
    try:
        user = _run_as()
        root = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = PostgresCluster(root=root, port=_free_port(), user=user)
        started = time.monotonic()
        cluster.start()
        print(f"postgres started in {time.monotonic() - started:.1f}s on port {cluster.port}")
    except Exception as exc:  # noqa: BLE001 - reported as a failure (or skip) below
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        message = f"could not start PostgreSQL for the store tests: {exc}"
        if os.environ.get("DARKROOM_TEST_SKIP_PG") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


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
