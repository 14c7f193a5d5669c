"""Requests: insertion and the read side (lookups, listings, queue position).

Status changes live in ``lifecycle.py``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa

from darkroom.domain import Page, Request, Status
from darkroom.errors import NotFound
from darkroom.store.rows import to_request
from darkroom.store.tables import requests


def insert_request(
    conn: sa.Connection, key_id: str, model: str, payload: dict[str, Any], now: float | None = None
) -> Request:
    """Store a new request, status queued, and return it.

    Raises NotFound if ``key_id`` is no key (the foreign key refused it).
    """
    now = time.time() if now is None else now
    try:
        row = conn.execute(
            requests.insert()
            .values(
                id=str(uuid.uuid4()),
                key_id=key_id,
                model=model,
                payload=payload,
                status=Status.QUEUED.value,
                created_at=now,
                updated_at=now,
                queued_at=now,
                attempts=0,
                cancel_requested=False,
            )
            .returning(*requests.c)
        ).one()
    except sa.exc.IntegrityError as exc:
        raise NotFound(f"no API key {key_id!r}") from exc
    return to_request(row)


def get_request(conn: sa.Connection, request_id: str, key_id: str | None = None) -> Request | None:
    """The request, or None. With ``key_id``, another key's request is None too."""
    query = sa.select(requests).where(requests.c.id == request_id)
    if key_id is not None:
        query = query.where(requests.c.key_id == key_id)
    row = conn.execute(query).first()
    return to_request(row) if row is not None else None


def list_requests(
    conn: sa.Connection,
    key_id: str,
    model: str | None = None,
    status: Status | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page:
    """One key's requests, newest first; ``total`` counts every match, not just the page."""
    where = [requests.c.key_id == key_id]
    if model is not None:
        where.append(requests.c.model == model)
    if status is not None:
        where.append(requests.c.status == Status(status).value)
    total = conn.execute(sa.select(sa.func.count()).select_from(requests).where(*where)).scalar_one()
    rows = conn.execute(
        sa.select(requests).where(*where).order_by(requests.c.seq.desc()).limit(limit).offset(offset)
    ).all()
    return Page(items=[to_request(r) for r in rows], total=total)


def count_requests(conn: sa.Connection) -> int:
    """How many requests are stored, all keys and states."""
    return conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar_one()


def queue_position(conn: sa.Connection, request_id: str) -> int | None:
    """How many queued requests for the same model are ahead of this one (0 = next).

    None if the request is unknown or not queued. Mirrors the claim order (seq), so it
    must change with the claim if the claim ever orders otherwise.
    """
    me = conn.execute(
        sa.select(requests.c.seq, requests.c.model, requests.c.status).where(requests.c.id == request_id)
    ).first()
    if me is None or me.status != Status.QUEUED.value:
        return None
    return conn.execute(
        sa.select(sa.func.count())
        .select_from(requests)
        .where(
            requests.c.status == Status.QUEUED.value,
            requests.c.model == me.model,
            requests.c.seq < me.seq,
        )
    ).scalar_one()
