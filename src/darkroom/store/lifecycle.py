"""Request status changes: every one is a single guarded UPDATE through ``_transition``.

The guard (``status IN expected`` plus, where it matters, the lease owner) is checked by
the database at the moment of the write, so two actors racing for the same request
cannot both win: the loser's UPDATE matches no row and it gets None back. That is how a
zombie worker (whose lease lapsed and whose request was requeued or re-claimed) is kept
from writing an outcome: the lease owner no longer matches.

Every function here writes: call it inside ``database.write_transaction`` (BEGIN
IMMEDIATE on SQLite).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from darkroom.domain import TRANSITIONS, Request, Status
from darkroom.errors import Conflict, RequestNotFound
from darkroom.store import webhooks
from darkroom.store.requests import get_request
from darkroom.store.rows import to_request
from darkroom.store.tables import requests

WORKER_LOST = "worker_lost"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class LeaseState:
    """What a worker learns when it renews its lease.

    ``owned`` False: the request is no longer this worker's (requeued after the lease
    lapsed, re-claimed, or finished): stop and discard the work. ``cancel_requested``:
    the client asked to stop; stop at the next step and call ``mark_cancelled``.
    Truthy when owned.
    """

    owned: bool
    cancel_requested: bool = False

    def __bool__(self) -> bool:
        return self.owned


def _transition(
    conn: sa.Connection,
    request_id: str | sa.ScalarSelect[Any],
    to: Status,
    *,
    expect: set[Status],
    now: float,
    owner: str | None = None,
    values: dict[str, Any] | None = None,
    guard: Iterable[sa.ColumnElement[bool]] = (),
) -> Request | None:
    """Move one request to ``to`` if it is in one of the ``expect`` states; return it, or None.

    ``request_id`` is an id or a scalar subquery selecting one (the claim). ``owner``
    adds ``lease_owner = owner`` to the guard; ``guard`` adds further conditions;
    ``values`` are the other columns to set. None means no row matched: the request is
    unknown or the transition is not legal from its current state (or owner). A move to
    a terminal state of a request with a webhook URL also queues its webhook delivery.

    Raises ValueError (a programming error) if ``to`` is not in TRANSITIONS of some
    expected state: the guard must never be able to make an illegal move.
    """
    if not expect:
        raise ValueError("expect must name at least one state")
    for source in expect:
        if to not in TRANSITIONS[source]:
            raise ValueError(f"{source} -> {to} is not a legal transition")
    conditions = [
        requests.c.id == request_id,
        requests.c.status.in_(sorted(s.value for s in expect)),
        *guard,
    ]
    if owner is not None:
        conditions.append(requests.c.lease_owner == owner)
    statement = (
        sa.update(requests)
        .where(*conditions)
        .values(status=to.value, updated_at=now, **(values or {}))
        .returning(*requests.c)
    )
    row = conn.execute(statement).first()
    if row is None:
        return None
    request = to_request(row)
    if to.is_terminal and request.webhook_url:
        # Same transaction as the transition: exactly one delivery per terminal state.
        webhooks.enqueue_delivery(conn, request, now)
    return request


def _queue_order() -> tuple[sa.ColumnElement[Any], ...]:
    """The queue's whole scheduling policy, as an ORDER BY that ``ix_requests_queue`` serves:

    1. ``priority``: high (0) before normal (1) before low (2);
    2. ``turn``: round-robin over keys, fixed at submit (``requests.next_turn``), so one
       key with 1,000 queued requests cannot starve another key's single request;
    3. ``seq``: FIFO within a turn.

    ``requests.queue_position`` counts along the same order.
    """
    return (requests.c.priority, requests.c.turn, requests.c.seq)


def _locked(query: sa.Select[Any]) -> sa.Select[Any]:
    # PostgreSQL: FOR UPDATE SKIP LOCKED makes concurrent claimers step over rows another
    # claimer holds instead of queueing behind them. SQLite has no row locks (SQLAlchemy
    # drops the clause): BEGIN IMMEDIATE makes the whole claim exclusive there.
    return query.with_for_update(skip_locked=True)


def _head_of_queue(conn: sa.Connection, models: list[str], shape_key: str | None) -> Any:
    """The next queued request over ``models`` (of ``shape_key``, if given): one index walk
    per model, the best head wins.

    (One query with ``model IN (...)`` would have to sort every queued row of those models.)
    """
    heads = []
    for model in models:
        where = [requests.c.status == Status.QUEUED.value, requests.c.model == model]
        if shape_key is not None:
            where.append(requests.c.shape_key == shape_key)
        row = conn.execute(_locked(
            sa.select(requests.c.id, requests.c.model, requests.c.shape_key, *_queue_order())
            .where(*where)
            .order_by(*_queue_order())
            .limit(1)
        )).first()
        if row is not None:
            heads.append(row)
    # Turns are per model, so they say nothing across models: between the models' heads,
    # the higher priority and then the older request goes first.
    return min(heads, key=lambda r: (r.priority, r.seq), default=None)


def claim_batch(
    conn: sa.Connection,
    worker_id: str,
    models: list[str],
    lease_s: float,
    now: float,
    max_batch: int = 1,
    shape_key: str | None = None,
) -> list[Request]:
    """Take the next queued request for one of ``models`` and up to ``max_batch - 1`` more that can share its
    pipeline call (same model and ``shape_key``), in queue order; [] if nothing is queued.
    With ``shape_key``, only requests of that shape are taken (filling a batch).

    Each becomes processing, leased to ``worker_id`` until ``now + lease_s``, attempts + 1.
    Every move is a guarded ``_transition`` (status still queued), so a lost race takes
    nothing rather than a request twice. Requests without a shape key (queued before
    revision 0003) run alone.
    """
    if not models:
        return []
    head = _head_of_queue(conn, list(models), shape_key)
    if head is None:
        return []
    ids = [head.id]
    if max_batch > 1 and head.shape_key is not None:
        ids += conn.execute(_locked(
            sa.select(requests.c.id)
            .where(requests.c.status == Status.QUEUED.value, requests.c.model == head.model,
                   requests.c.shape_key == head.shape_key, requests.c.id != head.id)
            .order_by(*_queue_order())
            .limit(max_batch - 1)
        )).scalars().all()
    claimed = []
    for request_id in ids:
        request = _transition(
            conn,
            request_id,
            Status.PROCESSING,
            expect={Status.QUEUED},
            now=now,
            values={
                "lease_owner": worker_id,
                "lease_expires_at": now + lease_s,
                "started_at": now,
                "attempts": requests.c.attempts + 1,
                "progress_step": None,
                "progress_total": None,
                "preview_step": None,  # a previous attempt's preview is stale
            },
        )
        if request is not None:
            claimed.append(request)
    return claimed


def claim_request(conn: sa.Connection, worker_id: str, models: list[str], lease_s: float, now: float) -> Request | None:
    """Take the next queued request (see ``claim_batch``) alone; None if nothing is queued."""
    claimed = claim_batch(conn, worker_id, models, lease_s, now, max_batch=1)
    return claimed[0] if claimed else None


def _renew(
    conn: sa.Connection, request_id: str, worker_id: str, lease_s: float, now: float, **values: Any
) -> LeaseState:
    # Not a status change, so not a _transition, but guarded the same way: only the
    # owner of a processing request may extend its lease. A lease that has lapsed but was
    # not requeued yet is still the owner's: renewing it is the owner catching up.
    row = conn.execute(
        sa.update(requests)
        .where(
            requests.c.id == request_id,
            requests.c.status == Status.PROCESSING.value,
            requests.c.lease_owner == worker_id,
        )
        .values(lease_expires_at=now + lease_s, updated_at=now, **values)
        .returning(requests.c.cancel_requested)
    ).first()
    if row is None:
        return LeaseState(owned=False, cancel_requested=False)
    return LeaseState(owned=True, cancel_requested=bool(row.cancel_requested))


def renew_lease(conn: sa.Connection, request_id: str, worker_id: str, lease_s: float, now: float) -> LeaseState:
    """Extend the worker's lease to ``now + lease_s``; see LeaseState for what comes back."""
    return _renew(conn, request_id, worker_id, lease_s, now)


def _lease_states(rows: Any, request_ids: list[str]) -> dict[str, LeaseState]:
    """Every id's LeaseState from the (id, cancel_requested) rows still owned; not owned if absent."""
    found = {r.id: LeaseState(owned=True, cancel_requested=bool(r.cancel_requested)) for r in rows}
    return {i: found.get(i, LeaseState(owned=False)) for i in request_ids}


def renew_leases(
    conn: sa.Connection, request_ids: list[str], worker_id: str, lease_s: float, now: float
) -> dict[str, LeaseState]:
    """``renew_lease`` for a batch in one UPDATE; every id gets an answer (not owned if no row matched)."""
    rows = conn.execute(
        sa.update(requests)
        .where(
            requests.c.id.in_(request_ids),
            requests.c.status == Status.PROCESSING.value,
            requests.c.lease_owner == worker_id,
        )
        .values(lease_expires_at=now + lease_s, updated_at=now)
        .returning(requests.c.id, requests.c.cancel_requested)
    ).all()
    return _lease_states(rows, request_ids)


def lease_states(conn: sa.Connection, request_ids: list[str], worker_id: str) -> dict[str, LeaseState]:
    """What ``renew_leases`` would answer, read without writing (a cheap look after a wake-up)."""
    rows = conn.execute(
        sa.select(requests.c.id, requests.c.cancel_requested).where(
            requests.c.id.in_(request_ids),
            requests.c.status == Status.PROCESSING.value,
            requests.c.lease_owner == worker_id,
        )
    ).all()
    return _lease_states(rows, request_ids)


def report_progress(
    conn: sa.Connection,
    request_id: str,
    worker_id: str,
    step: int,
    total: int,
    lease_s: float,
    now: float,
    preview_step: int | None = None,
) -> LeaseState:
    """Record progress ``step``/``total`` and renew the lease, in one UPDATE.

    ``preview_step``: the step of a preview image the worker has just stored; None leaves
    the recorded one as it is.
    """
    values: dict[str, Any] = {"progress_step": step, "progress_total": total}
    if preview_step is not None:
        values["preview_step"] = preview_step
    return _renew(conn, request_id, worker_id, lease_s, now, **values)


def _ended(now: float) -> dict[str, Any]:
    # lease_owner stays, as a record of which worker ran it last; the lease itself ends.
    return {"finished_at": now, "lease_expires_at": None}


def finish_request(
    conn: sa.Connection, request_id: str, worker_id: str, outcome: dict[str, Any], now: float,
    steps: int | None = None,
) -> Request | None:
    """processing -> success with ``outcome``, only by the lease owner; None otherwise.

    The progress ends at its total: the last reported total, else ``steps`` (the job's), so a
    run whose progress reports all failed or were still in flight still reads N of N.

    Cancel-aware: a cancel accepted before this moment wins, so a request whose cancel
    was flagged (during output moderation, encoding or storing) ends ``cancelled``
    instead, and that record comes back; the caller then discards its result.
    Exactly-once: a second finish, or a zombie's after its request was requeued, matches
    no row and writes nothing.
    """
    finished = _transition(
        conn,
        request_id,
        Status.SUCCESS,
        expect={Status.PROCESSING},
        owner=worker_id,
        now=now,
        # Every step was done: the progress says so even if the last report was still in flight.
        values={**_ended(now), "outcome": outcome, "error": None,
                "progress_step": sa.func.coalesce(requests.c.progress_total, steps),
                "progress_total": sa.func.coalesce(requests.c.progress_total, steps)},
        guard=[sa.not_(requests.c.cancel_requested)],
    )
    if finished is not None:
        return finished
    return mark_cancelled(conn, request_id, worker_id, now)


def fail_request(
    conn: sa.Connection, request_id: str, worker_id: str, error: dict[str, Any], now: float
) -> Request | None:
    """processing -> failed, only by the lease owner; ``error`` is {"code", "message"}.

    The outcome becomes {"error": error}. None if the worker does not own it (any more).
    """
    return _transition(
        conn,
        request_id,
        Status.FAILED,
        expect={Status.PROCESSING},
        owner=worker_id,
        now=now,
        values={**_ended(now), "outcome": {"error": error}, "error": error},
    )


def _cancelled_values(now: float, message: str) -> dict[str, Any]:
    error = {"code": CANCELLED, "message": message}
    return {**_ended(now), "outcome": {"error": error}, "error": error, "cancel_requested": True}


def cancel_request(conn: sa.Connection, request_id: str, key_id: str, now: float) -> Request:
    """Cancel on the client's behalf and return the fresh record.

    queued -> cancelled at once. processing: only flagged (``cancel_requested``); the
    worker sees it when it next renews, stops, and calls ``mark_cancelled``. Flagging
    again is a no-op. Raises Conflict if the request already ended, RequestNotFound if
    it is unknown or belongs to another key.
    """
    mine = requests.c.key_id == key_id
    # On PostgreSQL the request can move between these statements (claimed, or requeued
    # by recovery); each attempt is guarded, so retry the two moves a few times.
    for _ in range(5):
        cancelled = _transition(
            conn,
            request_id,
            Status.CANCELLED,
            expect={Status.QUEUED},
            now=now,
            values=_cancelled_values(now, "cancelled by the client before it started"),
            guard=[mine],
        )
        if cancelled is not None:
            return cancelled
        flagged = conn.execute(
            sa.update(requests)
            .where(requests.c.id == request_id, mine, requests.c.status == Status.PROCESSING.value)
            .values(cancel_requested=True, updated_at=now)
            .returning(*requests.c)
        ).first()
        if flagged is not None:
            return to_request(flagged)
        current = get_request(conn, request_id, key_id=key_id)
        if current is None:
            raise RequestNotFound(f"no request {request_id!r}")
        if current.status.is_terminal:
            raise Conflict(f"request is already {current.status.value}")
    raise Conflict("request is changing state; try again")


def mark_cancelled(conn: sa.Connection, request_id: str, worker_id: str, now: float) -> Request | None:
    """processing -> cancelled by the lease owner (after it saw ``cancel_requested``)."""
    return _transition(
        conn,
        request_id,
        Status.CANCELLED,
        expect={Status.PROCESSING},
        owner=worker_id,
        now=now,
        values=_cancelled_values(now, "cancelled by the client while processing"),
    )


def requeue_stalled(
    conn: sa.Connection, max_attempts: int, now: float, dead_owners: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Recover requests whose lease lapsed before ``now`` (their worker died or hung), or whose
    owner is in ``dead_owners`` (a worker known dead: its supervisor saw it exit, or it missed
    its heartbeats), without waiting for the lease.

    Each goes back to queued (lease and progress cleared, queued_at and seq kept, so it
    is next in line) while it has had fewer than ``max_attempts`` claims; otherwise it
    fails with code ``worker_lost``. One whose cancel was requested is cancelled instead.
    Returns (requeued ids, failed ids); cancelled ones are in neither.

    The guard is status + (a still-lapsed lease or the same dead owner) + unchanged attempts
    and cancel flag: if the owner renews a lapsed lease, or another worker's recovery got
    here first and the request was claimed again, the UPDATE matches nothing.
    """
    dead = sorted(set(dead_owners))
    gone = sa.or_(requests.c.lease_expires_at < now, requests.c.lease_owner.in_(dead)) if dead \
        else requests.c.lease_expires_at < now
    stalled = conn.execute(
        sa.select(requests.c.id, requests.c.attempts, requests.c.cancel_requested)
        .where(requests.c.status == Status.PROCESSING.value, gone)
        .order_by(requests.c.seq)
    ).all()
    requeued: list[str] = []
    failed: list[str] = []
    for row in stalled:
        guard = [
            gone,
            requests.c.attempts == row.attempts,
            requests.c.cancel_requested == bool(row.cancel_requested),
        ]
        if row.cancel_requested:
            _transition(
                conn,
                row.id,
                Status.CANCELLED,
                expect={Status.PROCESSING},
                now=now,
                guard=guard,
                values=_cancelled_values(now, "cancelled by the client while processing"),
            )
        elif row.attempts < max_attempts:
            done = _transition(
                conn,
                row.id,
                Status.QUEUED,
                expect={Status.PROCESSING},
                now=now,
                guard=guard,
                values={
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "started_at": None,
                    "progress_step": None,
                    "progress_total": None,
                },
            )
            if done is not None:
                requeued.append(row.id)
        else:
            times = "once" if row.attempts == 1 else f"{row.attempts} times"
            error = {
                "code": WORKER_LOST,
                "message": f"the worker processing this request stopped responding {times}",
            }
            done = _transition(
                conn,
                row.id,
                Status.FAILED,
                expect={Status.PROCESSING},
                now=now,
                guard=guard,
                values={**_ended(now), "outcome": {"error": error}, "error": error},
            )
            if done is not None:
                failed.append(row.id)
    return requeued, failed
