"""Domain records to wire objects; shared by every dialect."""

from __future__ import annotations

from typing import Any

from darkroom.domain import Request, Status
from darkroom.service import Service, preview_key


def blob_url(service: Service, base_url: str, key: str, *, ttl_s: int | None = None) -> str:
    """A download URL for blob ``key``, valid ``ttl_s`` (default media_url_ttl_s): the blob store's
    own (an S3 presigned URL: the bytes never pass through darkroom) if it has one, else
    darkroom's signed ``/media`` URL."""
    ttl = ttl_s or service.settings.media_url_ttl_s
    direct = service.blobs.url_for(key, ttl)
    if direct:
        return direct
    if ttl_s is None:
        query = service.signed_media_query(key)
    else:
        expires, sig = service.signer.sign(key, ttl_s=ttl_s)
        query = f"exp={expires}&sig={sig}"
    return f"{base_url.rstrip('/')}/media/{key}?{query}"


def media_urls(service: Service, base_url: str, outcome: dict[str, Any]) -> list[dict[str, str]]:
    """Fresh URLs for each stored result (signed at read time, so they never go stale in the DB)."""
    return [{"id": m["id"], "url": blob_url(service, base_url, m["key"])} for m in outcome.get("media", [])]


def render_outcome(service: Service, base_url: str, outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    out = {k: v for k, v in outcome.items() if k != "media"}
    if "media" in outcome:
        out = {"media_urls": media_urls(service, base_url, outcome), **out}
    return out


def status_object(service: Service, base_url: str, request: Request, *, queue_position: int | None = None) -> dict:
    progress = None
    if request.progress_total:
        progress = {"step": request.progress_step or 0, "total": request.progress_total}
    return {
        "request_id": request.id,
        "org_id": "",
        "model": request.model,
        "status": request.status.value,
        "is_public": False,
        "payload": request.payload,
        "outcome": render_outcome(service, base_url, request.outcome),
        "created_at": int(request.created_at),
        "updated_at": int(request.updated_at),
        "queued_at": int(request.queued_at),
        "started_at": int(request.started_at) if request.started_at else None,
        "finished_at": int(request.finished_at) if request.finished_at else None,
        "attempts": request.attempts,
        "progress": progress,
        "queue_position": queue_position,
        "preview": preview_object(service, base_url, request),
        "webhooks": webhook_objects(service, request),
    }


def webhook_objects(service: Service, request: Request) -> list[dict[str, Any]]:
    """The request's webhook deliveries (only requests with a webhook URL have any)."""
    if not request.webhook_url:
        return []
    return [
        {
            "id": d.id,
            "event": d.event,
            "status": d.status.value,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "last_status_code": d.last_status_code,
            "delivered_at": int(d.delivered_at) if d.delivered_at else None,
            "next_attempt_at": int(d.next_attempt_at) if d.status == "pending" else None,
        }
        for d in service.store.list_webhook_deliveries(request.id)
    ]


def submit_object(request: Request) -> dict:
    return {
        "request_id": request.id,
        "model": request.model,
        "status": request.status.value,
        "created_at": int(request.created_at),
        "updated_at": int(request.updated_at),
        "queued_at": int(request.queued_at),
    }


def preview_object(service: Service, base_url: str, request: Request) -> dict[str, Any] | None:
    """The latest step preview while processing, {"step", "url"} (a small JPEG behind a signed
    URL, like results); None when there is none or the request is not processing.

    The preview is overwritten in place, so ``step`` is also in a ``/media`` URL: each preview
    gets its own URL and no cache can serve an older one. A presigned S3 URL cannot take an
    extra parameter (it would break the signature): it asks for ``Cache-Control: no-store``.
    """
    if request.status != Status.PROCESSING or request.preview_step is None:
        return None
    key = preview_key(request.id, request.attempts)
    url = service.blobs.url_for(key, service.settings.media_url_ttl_s, mutable=True) or (
        f"{base_url.rstrip('/')}/media/{key}?{service.signed_media_query(key)}&step={request.preview_step}"
    )
    return {"step": request.preview_step, "url": url}
