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
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                          "image/png": {"schema": {"type": "string", "format": "binary"}}},
              "description": "The image."},
        403: {"model": ErrorResponse, "description": "Missing, malformed, altered or expired signature "
                                                     "(invalid_signature)."},
        404: {"model": ErrorResponse, "description": "The result no longer exists (media_not_found)."},
    },
    response_class=Response,
    operation_id="get_media",
    summary="Download a result image (a signed URL from a status object, result or preview)",
)
def get_media(
    blob_key: str,
    # Both are in every signed URL (the OpenAPI document says so, api/openapi.py); one missing is
    # a 403 (the URL is not signed), not a 422.
    exp: str | None = Query(None, description="Expiry, Unix seconds: the `exp` of the signed URL."),
    sig: str | None = Query(None, description="HMAC-SHA256 of the blob key and `exp`, hex: the `sig` of the "
                                              "signed URL."),
    step: str | None = Query(None, description="On preview URLs only: the step it shows. Not checked; it makes "
                                               "each preview's URL its own, so that no cache serves an older one."),
    service: Service = Depends(get_service),
) -> Response:
    data, content_type = service.open_media(blob_key, exp, sig)
    return Response(content=data, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"})
