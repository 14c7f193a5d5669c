"""Row -> domain record conversion: nothing outside the store sees a row."""

from __future__ import annotations

from typing import Any

from darkroom.domain import ApiKey, GenerationSpec, Request, Status


def to_api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        rate_per_minute=row.rate_per_minute,
        max_in_flight=row.max_in_flight,
        allow_high_priority=bool(row.allow_high_priority),
        admin=bool(row.is_admin),
    )


def to_request(row: Any) -> Request:
    return Request(
        id=row.id,
        key_id=row.key_id,
        model=row.model,
        payload=row.payload,
        status=Status(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=row.attempts,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        progress_step=row.progress_step,
        progress_total=row.progress_total,
        cancel_requested=bool(row.cancel_requested),
        outcome=row.outcome,
        error=row.error,
        seq=row.seq,
        priority=row.priority,
        idempotency_key=row.idempotency_key,
        dialect=row.dialect,
        base_url=row.base_url,
        webhook_url=row.webhook_url,
        webhook_secret=row.webhook_secret,
        preview_step=row.preview_step,
        spec=GenerationSpec.from_json(row.spec) if row.spec else None,
        shape_key=row.shape_key,
        turn=row.turn,
    )
