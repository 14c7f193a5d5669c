"""Moving a deployment's store to another database (``darkroom migrate-store``): SQLite on one
machine to PostgreSQL for many.

Copies API keys, requests and webhook deliveries (workers register again when they start)
row for row, in one transaction on the target: all or nothing. The target must be migrated
and empty; the source is only read. Sequences on PostgreSQL continue after the copied rows.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from darkroom.errors import Conflict
from darkroom.store.tables import api_keys, requests, webhook_deliveries

#: Parents before children (foreign keys).
TABLES = (api_keys, requests, webhook_deliveries)
CHUNK = 1000


def copy_rows(source: sa.Engine, target: sa.Engine, *, report: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every row of ``TABLES`` from ``source`` to ``target``; the count per table.

    Raises Conflict if the target already holds rows in any of them (nothing is written).
    """
    counts: dict[str, int] = {}
    with source.connect() as src, target.begin() as dst:
        for table in TABLES:
            if dst.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
                raise Conflict(f"the target already has rows in {table.name}; migrate into an empty store")
        for table in TABLES:
            copied = 0
            rows = src.execution_options(stream_results=True).execute(sa.select(table))
            for chunk in rows.mappings().partitions(CHUNK):
                dst.execute(table.insert(), [dict(row) for row in chunk])
                copied += len(chunk)
            counts[table.name] = copied
            if report is not None:
                report(table.name, copied)
        if dst.dialect.name == "postgresql":
            # New requests are numbered after the copied ones (the rows were inserted with their seq).
            dst.execute(sa.text("SELECT setval(pg_get_serial_sequence('requests', 'seq'), "
                                "(SELECT COALESCE(max(seq), 0) + 1 FROM requests), false)"))
    return counts
