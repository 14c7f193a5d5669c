"""Result images behind signed, expiring URLs (no API key needed: the signature is the grant)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from darkroom.api.deps import get_service
from darkroom.api.schemas import ErrorResponse
from darkroom.service import Service

router = APIRouter(tags=["media"])


@router.get(
    "/media/{blob_key:path}",
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "The image."},
        403: {"model": ErrorResponse, "description": "Missing, altered or expired signature."},
        404: {"model": ErrorResponse, "description": "The result no longer exists."},
    },
    response_class=Response,
    summary="Download a result image",
)
def get_media(
    blob_key: str,
    exp: str | None = Query(None, description="Expiry, Unix seconds."),
    sig: str | None = Query(None, description="HMAC-SHA256 signature."),
    service: Service = Depends(get_service),
) -> Response:
    data, content_type = service.open_media(blob_key, exp, sig)
    return Response(content=data, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"})
