"""Worker registrations and heartbeats: how the API knows who serves a model."""

from __future__ import annotations

import sqlalchemy as sa

from darkroom.store.tables import workers


def register_worker(conn: sa.Connection, worker_id: str, models: list[str], now: float) -> None:
    """Record (or re-record) a worker and the models it serves; counts as a heartbeat."""
    # UPDATE-then-INSERT rather than a dialect-specific upsert: ids are unique per process,
    # so two registrations of one id do not race.
    updated = conn.execute(
        sa.update(workers)
        .where(workers.c.id == worker_id)
        .values(models=list(models), started_at=now, heartbeat_at=now)
    )
    if updated.rowcount == 0:
        conn.execute(workers.insert().values(id=worker_id, models=list(models), started_at=now, heartbeat_at=now))


def heartbeat_worker(conn: sa.Connection, worker_id: str, now: float) -> bool:
    """Note that the worker is alive. False if it is not registered (it should register)."""
    updated = conn.execute(sa.update(workers).where(workers.c.id == worker_id).values(heartbeat_at=now))
    return updated.rowcount > 0


def remove_worker(conn: sa.Connection, worker_id: str) -> None:
    """Forget a worker (clean shutdown). Its leased requests are recovered by lease expiry."""
    conn.execute(sa.delete(workers).where(workers.c.id == worker_id))


def active_workers(conn: sa.Connection, model: str | None, within_s: float, now: float) -> int:
    """Workers that heartbeated in the last ``within_s`` seconds (and serve ``model``, if given)."""
    rows = conn.execute(sa.select(workers.c.models).where(workers.c.heartbeat_at >= now - within_s)).all()
    # Filtered here, not in SQL: JSON containment is spelled differently on each backend,
    # and there are a handful of workers.
    return sum(1 for r in rows if model is None or model in (r.models or []))
