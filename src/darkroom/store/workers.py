"""Worker registrations and heartbeats: how the API knows who serves a model, and the
operator's view of who runs what."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from darkroom.domain import WorkerInfo
from darkroom.store.tables import workers


def _info(row: Any) -> WorkerInfo:
    return WorkerInfo(
        id=row.id,
        models=list(row.models or []),
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        hostname=row.hostname,
        pid=row.pid,
        device=row.device,
        capacity=row.capacity,
        current=list(row.current or []),
        draining=bool(row.draining),
    )


def register_worker(conn: sa.Connection, worker_id: str, models: list[str], now: float,
                    details: dict[str, Any] | None = None) -> None:
    """Record (or re-record) a worker and the models it serves; counts as a heartbeat.

    ``details``: ``hostname``, ``pid``, ``device``, ``capacity`` (for the operator's view).
    """
    # UPDATE-then-INSERT rather than a dialect-specific upsert: ids are unique per process,
    # so two registrations of one id do not race.
    values = {"models": list(models), "started_at": now, "heartbeat_at": now, "current": [], "draining": False,
              **(details or {})}
    updated = conn.execute(sa.update(workers).where(workers.c.id == worker_id).values(**values))
    if updated.rowcount == 0:
        conn.execute(workers.insert().values(id=worker_id, **values))


def heartbeat_worker(conn: sa.Connection, worker_id: str, now: float, *, current: list[str] | None = None,
                     draining: bool | None = None) -> bool:
    """Note that the worker is alive (and, if given, what it holds and whether it drains).
    False if it is not registered (it should register)."""
    values: dict[str, Any] = {"heartbeat_at": now}
    if current is not None:
        values["current"] = list(current)
    if draining is not None:
        values["draining"] = draining
    updated = conn.execute(sa.update(workers).where(workers.c.id == worker_id).values(**values))
    return updated.rowcount > 0


def remove_worker(conn: sa.Connection, worker_id: str) -> None:
    """Forget a worker (clean shutdown). Its leased requests are recovered by lease expiry."""
    conn.execute(sa.delete(workers).where(workers.c.id == worker_id))


def list_workers(conn: sa.Connection) -> list[WorkerInfo]:
    """Every registered worker, the most recently started first."""
    return [_info(r) for r in conn.execute(sa.select(workers).order_by(workers.c.started_at.desc())).all()]


def silent_workers(conn: sa.Connection, since: float) -> list[str]:
    """Ids of registered workers whose last heartbeat is older than ``since``."""
    return list(conn.execute(sa.select(workers.c.id).where(workers.c.heartbeat_at < since)).scalars())


def active_workers(conn: sa.Connection, model: str | None, within_s: float, now: float) -> int:
    """Workers that heartbeated in the last ``within_s`` seconds (and serve ``model``, if given)."""
    rows = conn.execute(sa.select(workers.c.models).where(workers.c.heartbeat_at >= now - within_s)).all()
    # Filtered here, not in SQL: JSON containment is spelled differently on each backend,
    # and there are a handful of workers.
    return sum(1 for r in rows if model is None or model in (r.models or []))
