"""Webhook deliveries: one row per terminal transition of a request that has a webhook URL.

A delivery is ``pending`` until an attempt succeeds (``delivered``) or the retries run out
(``failed``). Dispatchers (one per API process) claim due deliveries under a short lease,
so two replicas rarely send the same one at the same time; the lease lapses if its
dispatcher dies mid-send and the delivery is sent again (at-least-once: receivers
de-duplicate on the delivery id, sent as ``webhook-id``).

Like ``lifecycle.py``, every write here runs inside ``database.write_transaction``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from darkroom.domain import Request
from darkroom.store.tables import webhook_deliveries as deliveries


class DeliveryStatus(StrEnum):
    """A delivery's state; mirrored by the table's CHECK."""

    PENDING = "pending"  # waiting for its next attempt (or being attempted, under a lease)
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # attempts exhausted, or nothing left to send; no more attempts


@dataclass(frozen=True)
class WebhookDelivery:
    """One webhook delivery as stored."""

    id: str  # the webhook-id header: stable across attempts
    request_id: str
    event: str  # the terminal status that triggered it: success, failed or cancelled
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    last_error: str | None = None
    last_status_code: int | None = None
    delivered_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None


def _to_delivery(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        request_id=row.request_id,
        event=row.event,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_error=row.last_error,
        last_status_code=row.last_status_code,
        delivered_at=row.delivered_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
    )


def enqueue_delivery(conn: sa.Connection, request: Request, now: float) -> str:
    """Store a pending delivery of ``request``'s current (terminal) status, due now; its id.

    Called by ``lifecycle._transition`` in the transaction that made the request
    terminal, so the delivery exists if and only if the transition committed.
    """
    delivery_id = str(uuid.uuid4())
    conn.execute(
        deliveries.insert().values(
            id=delivery_id,
            request_id=request.id,
            event=request.status.value,
            status=DeliveryStatus.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    return delivery_id


def _claimable(now: float) -> list[sa.ColumnElement[bool]]:
    return [
        deliveries.c.status == DeliveryStatus.PENDING.value,
        deliveries.c.next_attempt_at <= now,
        sa.or_(deliveries.c.lease_expires_at.is_(None), deliveries.c.lease_expires_at < now),
    ]


def any_due(conn: sa.Connection, now: float) -> bool:
    """Whether a claim would find something: a cheap read, so idle polls take no write lock."""
    return conn.execute(sa.select(deliveries.c.id).where(*_claimable(now)).limit(1)).first() is not None


def claim_deliveries(conn: sa.Connection, owner: str, lease_s: float, limit: int, now: float) -> list[WebhookDelivery]:
    """Lease up to ``limit`` due deliveries (oldest due first) to ``owner`` until ``now + lease_s``.

    PostgreSQL: the SELECT locks with ``FOR UPDATE SKIP LOCKED``, so concurrent claimers
    take different rows; SQLite: BEGIN IMMEDIATE makes the claim exclusive. The UPDATE
    repeats the guard, so a row that changed in between is simply not claimed.
    """
    ids = conn.execute(
        sa.select(deliveries.c.id)
        .where(*_claimable(now))
        .order_by(deliveries.c.next_attempt_at, deliveries.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    if not ids:
        return []
    rows = conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.id.in_(ids), *_claimable(now))
        .values(lease_owner=owner, lease_expires_at=now + lease_s, updated_at=now)
        .returning(*deliveries.c)
    ).all()
    return sorted((_to_delivery(r) for r in rows), key=lambda d: (d.next_attempt_at, d.created_at))


def record_attempt(
    conn: sa.Connection,
    delivery_id: str,
    owner: str,
    *,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    retry_at: float | None,
    now: float,
) -> WebhookDelivery | None:
    """Record one attempt by the lease holder and end its lease; the updated delivery, or
    None if ``owner`` no longer holds it (its lease lapsed and another dispatcher took it).

    ``delivered``: -> delivered. Otherwise ``retry_at`` is when to try again (stays
    pending), or None to give up (-> failed).
    """
    if delivered:
        status, extra = DeliveryStatus.DELIVERED, {"delivered_at": now}
    elif retry_at is not None:
        status, extra = DeliveryStatus.PENDING, {"next_attempt_at": retry_at}
    else:
        status, extra = DeliveryStatus.FAILED, {}
    row = conn.execute(
        sa.update(deliveries)
        .where(
            deliveries.c.id == delivery_id,
            deliveries.c.status == DeliveryStatus.PENDING.value,
            deliveries.c.lease_owner == owner,
        )
        .values(
            status=status.value,
            attempts=deliveries.c.attempts + 1,
            last_status_code=status_code,
            last_error=error,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            **extra,
        )
        .returning(*deliveries.c)
    ).first()
    return _to_delivery(row) if row is not None else None


def release_deliveries(conn: sa.Connection, owner: str, now: float) -> int:
    """End ``owner``'s leases on pending deliveries (on shutdown), so others may take them now."""
    result = conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.lease_owner == owner, deliveries.c.status == DeliveryStatus.PENDING.value)
        .values(lease_owner=None, lease_expires_at=None, updated_at=now)
    )
    return result.rowcount


def list_deliveries(conn: sa.Connection, request_id: str) -> list[WebhookDelivery]:
    """A request's deliveries, oldest first."""
    rows = conn.execute(
        sa.select(deliveries).where(deliveries.c.request_id == request_id).order_by(deliveries.c.created_at)
    ).all()
    return [_to_delivery(r) for r in rows]
