"""The Black Forest Labs dialect: ``POST /v1/{model}``, ``GET /v1/get_result``, ``x-key`` auth.

A thin mapping onto the same use cases as the primary dialect (``Service.submit``,
``Service.get_request``); see docs/dialects.md for the status words and error shapes.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

from darkroom.api.deps import base_url, get_service, submit_options
from darkroom.api.dialect import error_route, log_unexpected, nearest_ratio
from darkroom.api.render import blob_url
from darkroom.domain import ApiKey, Status, SubmitOptions
from darkroom.domain import Request as QueuedRequest
from darkroom.errors import (
    DarkroomError,
    InvalidField,
    RateLimited,
    RequestNotFound,
    Unauthorized,
)
from darkroom.service import Service

DIALECT = "bfl"
RESULT_URL_TTL_S = 600  # BFL's result URLs live 10 minutes; ours do too (or less, if the operator says so)


class BflStatus(StrEnum):
    """get_result's status words (BFL's, verbatim)."""

    PENDING = "Pending"  # queued or processing
    READY = "Ready"  # success; result.sample holds the image URL
    REQUEST_MODERATED = "Request Moderated"  # failed with input_moderated
    CONTENT_MODERATED = "Content Moderated"  # failed with output_moderated
    ERROR = "Error"  # any other failure, or cancelled; details say which
    TASK_NOT_FOUND = "Task not found"  # unknown id, or another key's


def bfl_error(request: Request, exc: Exception) -> Response:
    """BFL's error shape: FastAPI's ``{"detail": ...}``, plus ``message`` (what the official
    ``blackforest`` client reads from an error body)."""
    headers = None
    if isinstance(exc, RequestValidationError):
        detail: Any = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        status, message = 422, "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                                          for e in exc.errors()) or "invalid request"
    elif isinstance(exc, InvalidField):
        field = (exc.field or "body").removeprefix("payload.")
        message = f"{field}: {exc.message.removeprefix(f'{exc.field}: ')}"
        detail = [{"loc": ["body", *field.split(".")], "msg": message, "type": exc.code}]
        status = 422
    elif isinstance(exc, DarkroomError):
        # BFL answers a missing or wrong key with 403 (its documented errors have no 401).
        status = 403 if isinstance(exc, Unauthorized) else exc.status_code
        detail, message = exc.message, exc.message
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
        if status >= 500:
            log_unexpected(request, exc)
    elif isinstance(exc, HTTPException):
        status, detail, message = exc.status_code, str(exc.detail), str(exc.detail)
    else:
        log_unexpected(request, exc)
        status, detail, message = 500, "Internal Server Error", "internal server error"
    return JSONResponse({"detail": detail, "message": message}, status_code=status, headers=headers)


router = APIRouter(tags=["Black Forest Labs dialect"], route_class=error_route(bfl_error))
x_key = APIKeyHeader(name="x-key", auto_error=False, description="darkroom API key, as BFL's `x-key` header.")


def bfl_key(secret: str | None = Depends(x_key), service: Service = Depends(get_service)) -> ApiKey:
    if not secret:
        raise Unauthorized("missing API key: send 'x-key: <key>'")
    return service.authenticate(secret)


def bfl_status(request: QueuedRequest) -> BflStatus:
    """A request's status in BFL's words."""
    if request.status in (Status.QUEUED, Status.PROCESSING):
        return BflStatus.PENDING
    if request.status == Status.SUCCESS:
        return BflStatus.READY
    code = (request.error or {}).get("code")
    if request.status == Status.FAILED and code == "input_moderated":
        return BflStatus.REQUEST_MODERATED
    if request.status == Status.FAILED and code == "output_moderated":
        return BflStatus.CONTENT_MODERATED
    return BflStatus.ERROR


def result_object(service: Service, base: str, request: QueuedRequest) -> dict[str, Any]:
    """get_result's answer for a request (also the body of its webhooks)."""
    status = bfl_status(request)
    result = details = progress = None
    if request.progress_total and request.status == Status.PROCESSING:
        progress = min(1.0, (request.progress_step or 0) / request.progress_total)
    elif request.status == Status.QUEUED:
        progress = 0.0
    if status == BflStatus.READY:
        progress = 1.0
        result = _ready_result(service, base, request)
    elif status != BflStatus.PENDING:
        details = dict(request.error or {"code": request.status.value, "message": request.status.value})
    return {"id": request.id, "status": status.value, "result": result, "progress": progress, "details": details}


def _ready_result(service: Service, base: str, request: QueuedRequest) -> dict[str, Any]:
    outcome = request.outcome or {}
    media = outcome.get("media") or [{}]
    key = media[0].get("key", "")
    started, finished = request.started_at, request.finished_at
    return {
        "sample": blob_url(service, base, key, ttl_s=min(RESULT_URL_TTL_S, service.settings.media_url_ttl_s)),
        "prompt": outcome.get("prompt"),
        "seed": outcome.get("seed"),
        "start_time": started,
        "end_time": finished,
        "duration": round(finished - started, 3) if started and finished else None,
        "width": outcome.get("width"),
        "height": outcome.get("height"),
        "timings": outcome.get("timings"),
    }


@router.get("/v1/get_result", summary="Status and result of a task (BFL's polling_url)")
def get_result(
    id: str = Query(..., description="The id POST /v1/{model} returned."),
    key: ApiKey = Depends(bfl_key),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict[str, Any]:
    # BFL answers an unknown id with 200 and the status word; its clients read the word.
    try:
        request = service.get_request(key, id)
    except RequestNotFound:
        return {"id": id, "status": BflStatus.TASK_NOT_FOUND.value, "result": None, "progress": None,
                "details": None}
    return result_object(service, base, request)


@router.post("/v1/{model}", summary="Submit a task for a model (or alias); poll polling_url")
def submit_task(
    model: str,
    body: dict[str, Any] = Body(..., description="The model's payload fields at top level, plus optional "
                                                 "webhook_url and webhook_secret."),
    options: SubmitOptions = Depends(submit_options),
    key: ApiKey = Depends(bfl_key),
    service: Service = Depends(get_service),
) -> dict[str, str]:
    payload = _sized(body)
    submitted = service.submit(key, model, payload, replace(options, dialect=DIALECT))
    base = (options.base_url or "").rstrip("/")
    return {"id": submitted.request.id, "polling_url": f"{base}/v1/get_result?id={submitted.request.id}"}


def _sized(body: dict[str, Any]) -> dict[str, Any]:
    """BFL's text-to-image inputs give ``width`` and ``height`` (the official client always
    sends them for flux-pro-1.1 and flux-dev); darkroom models take an aspect ratio at about
    one megapixel, so a pair becomes the nearest ratio. Anything else is left to validation."""
    if "width" not in body or "height" not in body or "aspect_ratio" in body:
        return body
    width, height = body["width"], body["height"]
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidField(name, "must be a positive integer")
    out = {k: v for k, v in body.items() if k not in ("width", "height")}
    out["aspect_ratio"] = nearest_ratio(width, height)
    return out
