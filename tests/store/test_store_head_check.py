"""``migrate`` on a store already at the newest revision: one query, no alembic import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from darkroom.store import Store, database
from darkroom.store.tables import metadata


def test_head_revision_is_alembics() -> None:
    assert database.head_revision() == ScriptDirectory.from_config(database.alembic_config()).get_current_head()


def test_a_store_at_head_migrates_without_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    store = Store(url)
    store.migrate()  # a new database: alembic runs
    store.close()
    probe = ("import sys; from darkroom.store import Store; s = Store(sys.argv[1]); s.migrate(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))")
    out = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_a_store_behind_head_is_upgraded(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'd.db'}")
    store.migrate()
    with store._engine.begin() as conn:  # back one revision, with alembic's own downgrade
        command.downgrade(database.alembic_config(conn), "-1")
    assert _revision(store) != database.head_revision()
    store.migrate()
    assert _revision(store) == database.head_revision()
    with store._engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.close()


def _revision(store: Store) -> str:
    with store._engine.connect() as conn:
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
