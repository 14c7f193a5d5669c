"""FastAPI dependencies: the service, the caller's key, the base URL for links."""

from __future__ import annotations

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from darkroom.domain import ApiKey, Priority, SubmitOptions
from darkroom.errors import InvalidField
from darkroom.service import Service, parse_priority

bearer = HTTPBearer(auto_error=False, description="darkroom API key (`darkroom keys create`).")


async def get_service(request: Request) -> Service:
    return request.app.state.service


def link_base(request: Request) -> str:
    """Where result links point: the configured public URL, else the URL this request came in on."""
    service: Service = request.app.state.service
    return service.settings.public_url or str(request.base_url)


async def base_url(request: Request) -> str:
    """``link_base`` as a dependency (async: no thread-pool trip for it)."""
    return link_base(request)


async def bearer_key(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    service: Service = Depends(get_service),
) -> ApiKey:
    # async, so that a key checked recently costs no trip to the thread pool; the store is
    # asked (from the pool) only on a miss.
    secret = credentials.credentials if credentials else None
    return service.cached_key(secret) or await run_in_threadpool(service.authenticate, secret)


def submit_options(
    request: Request,
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", max_length=255,
        description="Same key and body within 24 h returns the original request; another body answers 409."),
    priority: str | None = Header(None, alias="X-Priority", description="high, normal (default) or low."),
) -> SubmitOptions:
    """Request-level options every dialect reads from headers; dialect routers add the rest."""
    if idempotency_key is not None and not idempotency_key.strip():
        raise InvalidField("Idempotency-Key", "must not be empty")
    return SubmitOptions(
        priority=parse_priority(priority, "X-Priority") if priority else Priority.NORMAL,
        idempotency_key=idempotency_key.strip() if idempotency_key else None,
        base_url=link_base(request),
    )
