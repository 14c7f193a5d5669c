"""A throwaway PostgreSQL cluster for the benchmarks.

The same recipe as the store tests (``tests/store/conftest.py``): ``initdb`` + ``pg_ctl``
from PATH (or ``DARKROOM_TEST_PG_BIN``), a temp dir, a free loopback port, run as
``postgres`` (else ``nobody``) when we are root. One difference: fsync stays ON and
``synchronous_commit`` at its default (on), so a commit costs what it costs in production.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
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
    """The unprivileged user to run PostgreSQL as (initdb refuses root), or None for ourselves."""
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
    """A cluster in a temp dir on a loopback port; ``start()``, ``new_database()``, ``stop()``."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="darkroom-bench-pg-")))
    port: int = field(default_factory=_free_port)
    user: pwd.struct_passwd | None = field(default_factory=_run_as)
    _count: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(args, capture_output=True, text=True, cwd=self.root, timeout=60, **kwargs)

    def start(self) -> PostgresCluster:
        try:
            return self._start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _start(self) -> PostgresCluster:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        result = self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "darkroom", "--auth=trust",
                           "-E", "UTF8", "--no-locale", "--no-sync")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        # fsync on (no -F): the benchmark's commits must be durable ones.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        result = self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                           "-w", "-t", "30", "-o", options, "start")
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{log}")
        return self

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        import psycopg

        self._count += 1
        name = f"bench{self._count}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=darkroom dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://darkroom@127.0.0.1:{self.port}/{name}"
