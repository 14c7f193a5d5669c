"""Requests: insertion and the read side (lookups, listings, queue position).

Status changes live in ``lifecycle.py``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa

from darkroom.domain import GenerationSpec, Page, Request, Status, SubmitOptions
from darkroom.errors import Conflict, NotFound
from darkroom.store.rows import to_request
from darkroom.store.tables import requests

#: Queue positions are counted exactly up to this many requests ahead, and estimated
#: beyond (see ``queue_position``): a status read costs the same with 10 or 100,000 queued.
EXACT_POSITION_LIMIT = 1000

#: The partial unique index on (key_id, idempotency_key) and the foreign key to api_keys:
#: the two rules an INSERT into requests can break (the ids are random UUIDs).
IDEMPOTENCY_INDEX = "ix_requests_idempotency"
_PG_UNIQUE_VIOLATION = "23505"
_PG_FOREIGN_KEY_VIOLATION = "23503"


class IdempotencyKeyTaken(Conflict):
    """The insert lost a race for its idempotency key: another transaction stored a request
    with the same (key, Idempotency-Key) between this one's lookup and its insert.

    Not "no API key": the key exists, and the right answer is the other request (a replay)
    or ``idempotency_conflict``, which a fresh transaction's lookup gives (``Store`` runs the
    submit again on it). A Conflict, so that if it ever reaches a client it is a 409 with
    the idempotency code, not a 404.
    """

    code = "idempotency_conflict"


def next_turn(conn: sa.Connection, key_id: str, model: str, priority: int) -> int:
    """The round-robin turn of a request the key queues now for ``model`` at ``priority``.

    The queue is served in (priority, turn, seq) order. A key's queued requests take
    consecutive turns, starting at the head of the queue (the smallest queued turn): a
    key with 1,000 queued requests holds turns h..h+999, and another key's single request
    gets turn h, so it is served within one round, not after the backlog. Turns are fixed
    at submit, so the claim and the queue position are index walks (``ix_requests_queue``,
    ``ix_requests_key_turn``), never a replay of the scheduler.
    """
    queued = (requests.c.status == Status.QUEUED.value, requests.c.model == model, requests.c.priority == priority)
    head = conn.execute(sa.select(sa.func.min(requests.c.turn)).where(*queued)).scalar()
    mine = conn.execute(sa.select(sa.func.max(requests.c.turn)).where(requests.c.key_id == key_id, *queued)).scalar()
    return max(head or 0, mine + 1 if mine is not None else 0)


def insert_request(
    conn: sa.Connection,
    key_id: str,
    model: str,
    payload: dict[str, Any],
    now: float | None = None,
    options: SubmitOptions | None = None,
    request_hash: str | None = None,
    spec: GenerationSpec | None = None,
) -> Request:
    """Store a new request, status queued, and return it.

    ``spec`` is the generation spec the service built (stored with its shape key).
    Raises NotFound if ``key_id`` is no key (the foreign key refused it), and
    IdempotencyKeyTaken if the key already has a request with ``options.idempotency_key``
    (the unique index refused it: a concurrent submit won the race). On PostgreSQL either
    leaves the transaction aborted: roll it back.
    """
    now = time.time() if now is None else now
    options = options or SubmitOptions()
    turn = next_turn(conn, key_id, model, int(options.priority))
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
                spec=spec.to_json() if spec is not None else None,
                shape_key=spec.shape_key() if spec is not None else None,
                turn=turn,
            )
            .returning(*requests.c)
        ).one()
    except sa.exc.IntegrityError as exc:
        violated = _violated_rule(exc)
        if violated == "idempotency":
            raise IdempotencyKeyTaken(
                "Idempotency-Key was used by a concurrent request", field="Idempotency-Key") from exc
        if violated == "key":
            raise NotFound(f"no API key {key_id!r}") from exc
        raise
    return to_request(row)


def _violated_rule(exc: sa.exc.IntegrityError) -> str | None:
    """Which rule a failed INSERT into requests broke: "idempotency", "key" (the foreign key
    to api_keys), or None if it cannot tell (then the caller must not guess).

    PostgreSQL (psycopg) names the constraint and the SQLSTATE; SQLite says it in the message
    ("UNIQUE constraint failed: requests.key_id, requests.idempotency_key", "FOREIGN KEY
    constraint failed").
    """
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    if diag is not None:  # psycopg
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate == _PG_UNIQUE_VIOLATION and diag.constraint_name == IDEMPOTENCY_INDEX:
            return "idempotency"
        if sqlstate == _PG_FOREIGN_KEY_VIOLATION:  # key_id is the table's only foreign key
            return "key"
        return None
    message = str(orig)
    if "FOREIGN KEY constraint failed" in message:
        return "key"
    if "UNIQUE constraint failed" in message and (
            "requests.idempotency_key" in message or IDEMPOTENCY_INDEX in message):
        return "idempotency"
    return None


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


def _ahead(priority: int, turn: int, seq: int) -> sa.ColumnElement[bool]:
    """Claimed before a request at (priority, turn, seq): the claim order as a row-value compare."""
    return sa.tuple_(requests.c.priority, requests.c.turn, requests.c.seq) < sa.tuple_(
        sa.literal(priority), sa.literal(turn), sa.literal(seq))


def queue_position(conn: sa.Connection, request_id: str) -> int | None:
    """How many queued requests for the same model will be claimed before this one (0 = next).

    None if the request is unknown or not queued. Exact (the claim order is (priority,
    turn, seq), and turns are fixed at submit) up to ``EXACT_POSITION_LIMIT`` requests
    ahead; beyond that an estimate, so that a read never walks a long queue: the last
    counted request's turn says how many requests share a turn (one per key with a
    backlog), and the turns between it and this request are assumed as full.
    """
    me = conn.execute(
        sa.select(requests.c.model, requests.c.status, requests.c.priority, requests.c.turn, requests.c.seq)
        .where(requests.c.id == request_id)
    ).first()
    if me is None or me.status != Status.QUEUED.value:
        return None
    queued = (requests.c.status == Status.QUEUED.value, requests.c.model == me.model)
    limit = EXACT_POSITION_LIMIT
    window = (
        sa.select(requests.c.priority, requests.c.turn)
        .where(*queued, _ahead(me.priority, me.turn, me.seq))
        .order_by(requests.c.priority, requests.c.turn, requests.c.seq)
        .limit(limit)
        .subquery()
    )
    mine = sa.case((window.c.priority == me.priority, window.c.turn))  # NULL for higher-priority rows
    counted, same, first_turn, last_turn = conn.execute(
        sa.select(sa.func.count(), sa.func.count(mine), sa.func.min(mine), sa.func.max(mine))
    ).one()
    if counted < limit or not same:
        return counted  # exact; or a lower bound when 1,000 higher-priority requests are ahead
    per_turn = same / max(1, last_turn - first_turn + 1)
    # Full turns between the last counted one and this request's, then on average half of
    # the others in its own turn.
    return counted + round(max(0, me.turn - last_turn - 1) * per_turn + (per_turn - 1) / 2)


def has_queued(conn: sa.Connection, models: list[str]) -> bool:
    """Whether any request is queued for one of ``models`` (one index probe per model)."""
    return any(
        conn.execute(sa.select(requests.c.id).where(requests.c.status == Status.QUEUED.value,
                                                    requests.c.model == model).limit(1)).first() is not None
        for model in models
    )


def find_idempotent(conn: sa.Connection, key_id: str, idempotency_key: str) -> Any:
    """The row that used this key's idempotency key, if any (any age).

    Race-free only under the key's lock (``keys.lock_key``): at READ COMMITTED this
    statement sees what committed before it started, so a submit that waited for the lock
    sees the request its predecessor inserted.
    """
    return conn.execute(
        sa.select(requests).where(requests.c.key_id == key_id, requests.c.idempotency_key == idempotency_key)
    ).first()


def release_idempotency_key(conn: sa.Connection, seq: int) -> None:
    """Forget an expired idempotency key so that it can be used again."""
    conn.execute(sa.update(requests).where(requests.c.seq == seq).values(idempotency_key=None))


def count_in_flight(conn: sa.Connection, key_id: str) -> int:
    """The key's requests queued or processing. Checking a limit with it and then inserting
    is atomic only under the key's lock (``keys.lock_key``)."""
    return conn.execute(
        sa.select(sa.func.count()).select_from(requests).where(
            requests.c.key_id == key_id,
            requests.c.status.in_([Status.QUEUED.value, Status.PROCESSING.value]),
        )
    ).scalar_one()


def created_since(conn: sa.Connection, key_id: str, since: float) -> list[float]:
    """Creation times of a key's requests after ``since``, oldest first (for the rate limit;
    like ``count_in_flight``, atomic with the insert only under the key's lock)."""
    return list(conn.execute(
        sa.select(requests.c.created_at)
        .where(requests.c.key_id == key_id, requests.c.created_at > since)
        .order_by(requests.c.created_at)
    ).scalars())


def ended_before(conn: sa.Connection, cutoff: float, limit: int) -> list[Request]:
    """Up to ``limit`` requests that ended before ``cutoff``, oldest first (retention)."""
    rows = conn.execute(
        sa.select(requests).where(requests.c.finished_at < cutoff).order_by(requests.c.finished_at).limit(limit)
    ).all()
    return [to_request(r) for r in rows]


def delete_requests(conn: sa.Connection, request_ids: list[str]) -> int:
    """Delete ended requests and their webhook deliveries; how many requests went.

    Only ended ones: a request that was requeued or is running is never deleted under it.
    """
    from darkroom.store.tables import webhook_deliveries

    ended = [s.value for s in Status if s.is_terminal]
    gone = list(conn.execute(
        sa.select(requests.c.id).where(requests.c.id.in_(request_ids), requests.c.status.in_(ended))
    ).scalars())
    if not gone:
        return 0
    conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.request_id.in_(gone)))
    return conn.execute(sa.delete(requests).where(requests.c.id.in_(gone))).rowcount
