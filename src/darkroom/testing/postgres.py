"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` from PATH (or
DARKROOM_TEST_PG_BIN), in a temp dir, on a free loopback port, fsync off.

initdb refuses to run as root, so under root the cluster runs as DARKROOM_TEST_PG_USER
(default ``postgres``, else ``nobody``) and its directory is chowned to that user. Tests
get it as the session fixture ``pg_cluster`` (tests/conftest.py).
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


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
    durable: bool = False  # fsync on, as in production (benchmarks); off for tests
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
        self._pg_ctl("start")

    def _options(self) -> str:
        # Loopback TCP only, the socket in our own dir; no fsync (-F) unless durable commits
        # are what is measured.
        fsync = "" if self.durable else " -F"
        return f"-h 127.0.0.1 -p {self.port} -k {self.root}{fsync} -c max_connections=200"

    def _pg_ctl(self, action: str, *args: str) -> None:
        """``pg_ctl ACTION``, waiting (``-w``) until the server accepts connections (or is down)."""
        result = self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "30",
            "-o", self._options(), *args, action,
        )  # fmt: skip
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl {action} failed:\n{result.stdout}\n{result.stderr}\n{log}")

    def restart(self, mode: str = "fast") -> None:
        """Restart the server as an operator or a crash would, for tests that must survive it.

        ``mode`` is pg_ctl's shutdown mode: ``fast`` (roll back open transactions, cut every
        session, then stop cleanly) or ``immediate`` (kill the server; the restart recovers
        from the WAL, as after a crash). Returns once the server accepts connections again,
        on the same port: every pooled connection to it is dead by then.
        """
        self._pg_ctl("restart", "-m", mode)

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


@contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[PostgresCluster]:
    """A started cluster, stopped and deleted on exit. Raises RuntimeError if it cannot start.

    ``durable``: fsync on and ``synchronous_commit`` at its default, so that a commit costs
    what it costs in production (the benchmarks); tests run without fsync."""
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = PostgresCluster(root=root, port=_free_port(), user=user, durable=durable)
        started = time.monotonic()
        cluster.start()
        print(f"postgres started in {time.monotonic() - started:.1f}s on port {cluster.port}")
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
