"""FastAPI dependencies: the service, the caller's key, the base URL for links."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from darkroom.domain import ApiKey
from darkroom.service import Service

bearer = HTTPBearer(auto_error=False, description="darkroom API key (`darkroom keys create`).")


def get_service(request: Request) -> Service:
    return request.app.state.service


def base_url(request: Request) -> str:
    """Where result links point: the configured public URL, else the URL this request came in on."""
    service: Service = request.app.state.service
    return service.settings.public_url or str(request.base_url)


def bearer_key(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    service: Service = Depends(get_service),
) -> ApiKey:
    return service.authenticate(credentials.credentials if credentials else None)
