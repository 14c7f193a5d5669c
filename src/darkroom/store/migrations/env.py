"""Alembic environment for darkroom's schema.

``darkroom.store.database.migrate`` runs this with an open connection already inside a
locked transaction (``config.attributes["connection"]``); the migrations join that
transaction, so the caller commits them together with the lock release. Run without a
connection (``alembic -x url=... upgrade head`` with a hand-made ini), it opens its own.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from darkroom.store.tables import metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or set sqlalchemy.url")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
