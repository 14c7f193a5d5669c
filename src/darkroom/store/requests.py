"""Requests: insertion and the read side (lookups, listings, queue position).

Status changes live in ``lifecycle.py``.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import deque
from typing import Any

import sqlalchemy as sa

from darkroom.domain import Page, Request, Status, SubmitOptions
from darkroom.errors import NotFound
from darkroom.store.rows import to_request
from darkroom.store.tables import api_keys, requests


def insert_request(
    conn: sa.Connection,
    key_id: str,
    model: str,
    payload: dict[str, Any],
    now: float | None = None,
    options: SubmitOptions | None = None,
    request_hash: str | None = None,
) -> Request:
    """Store a new request, status queued, and return it.

    Raises NotFound if ``key_id`` is no key (the foreign key refused it).
    """
    now = time.time() if now is None else now
    options = options or SubmitOptions()
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
                priority=int(options.priority),
                idempotency_key=options.idempotency_key,
                request_hash=request_hash,
                dialect=options.dialect,
                base_url=options.base_url,
                webhook_url=options.webhook_url,
                webhook_secret=options.webhook_secret,
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
    """How many queued requests for the same model will be claimed before this one (0 = next).

    None if the request is unknown or not queued. Replays the claim order of
    ``lifecycle._next_queued`` (priority, then round-robin over keys by their last claim,
    then FIFO) over the queued requests, so it is exact while nothing new arrives.
    """
    me = conn.execute(
        sa.select(requests.c.model, requests.c.status).where(requests.c.id == request_id)
    ).first()
    if me is None or me.status != Status.QUEUED.value:
        return None
    rows = conn.execute(
        sa.select(requests.c.id, requests.c.seq, requests.c.priority, requests.c.key_id,
                  sa.func.coalesce(api_keys.c.last_claimed_at, 0.0).label("turn"))
        .select_from(requests.join(api_keys, api_keys.c.id == requests.c.key_id))
        .where(requests.c.status == Status.QUEUED.value, requests.c.model == me.model)
        .order_by(requests.c.seq)
    ).all()
    turn = {r.key_id: r.turn for r in rows}
    later = max(turn.values(), default=0.0)  # each simulated claim moves its key's turn past all others
    position = 0
    for priority in sorted({r.priority for r in rows}):
        by_key: dict[str, deque[Any]] = {}
        for r in rows:
            if r.priority == priority:
                by_key.setdefault(r.key_id, deque()).append(r)
        heap = [(turn[k], q[0].seq, k) for k, q in by_key.items()]
        heapq.heapify(heap)
        while heap:
            _, _, key = heapq.heappop(heap)
            taken = by_key[key].popleft()
            if taken.id == request_id:
                return position
            position += 1
            later += 1.0
            turn[key] = later
            if by_key[key]:
                heapq.heappush(heap, (turn[key], by_key[key][0].seq, key))
    return position  # unreachable: the request is among the rows


def find_idempotent(conn: sa.Connection, key_id: str, idempotency_key: str) -> Any:
    """The row that used this key's idempotency key, if any (any age)."""
    return conn.execute(
        sa.select(requests).where(requests.c.key_id == key_id, requests.c.idempotency_key == idempotency_key)
    ).first()


def release_idempotency_key(conn: sa.Connection, seq: int) -> None:
    """Forget an expired idempotency key so that it can be used again."""
    conn.execute(sa.update(requests).where(requests.c.seq == seq).values(idempotency_key=None))


def count_in_flight(conn: sa.Connection, key_id: str) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(requests).where(
            requests.c.key_id == key_id,
            requests.c.status.in_([Status.QUEUED.value, Status.PROCESSING.value]),
        )
    ).scalar_one()


def created_since(conn: sa.Connection, key_id: str, since: float) -> list[float]:
    """Creation times of a key's requests after ``since``, oldest first."""
    return list(conn.execute(
        sa.select(requests.c.created_at)
        .where(requests.c.key_id == key_id, requests.c.created_at > since)
        .order_by(requests.c.created_at)
    ).scalars())
