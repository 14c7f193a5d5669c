"""The Black Forest Labs dialect: ``POST /v1/{model}``, ``GET /v1/get_result``, ``x-key`` auth.

A thin mapping onto the same use cases as the primary dialect (``Service.submit``,
``Service.get_request``); see docs/dialects.md for the status words and error shapes.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException

from darkroom.api.body import json_object
from darkroom.api.deps import base_url, get_service, submit_options
from darkroom.api.dialect import error_route, log_unexpected, nearest_ratio
from darkroom.api.render import blob_url
from darkroom.api.schemas import dialect_error_responses
from darkroom.domain import ApiKey, Status, SubmitOptions
from darkroom.domain import Request as QueuedRequest
from darkroom.errors import (
    DarkroomError,
    InvalidField,
    RateLimited,
    RequestNotFound,
    StoreUnavailable,
    Unauthorized,
)
from darkroom.service import Service

DIALECT = "bfl"
RESULT_URL_TTL_S = 600  # BFL's result URLs live 10 minutes; ours do too (or less, if the operator says so)

#: BFL's FLUX.2 routes. A deployment maps each to a model it has with an alias
#: (``--alias flux-2-pro=MODEL``); the model's parameters decide what a request may carry
#: (``input_image`` .. ``input_image_8`` where it takes that many), except safety_tolerance:
#: BFL's FLUX.2 range is 0-5 (0-6 on the older models), and these routes keep to it.
FLUX2_ROUTES = frozenset({"flux-2-pro", "flux-2-flex", "flux-2-max", "flux-2-klein-4b", "flux-2-klein-9b"})
FLUX2_MAX_SAFETY_TOLERANCE = 5
#: BFL's text-to-image ``width`` and ``height`` (mapped to the nearest aspect ratio): at most this.
MAX_SIDE = 65536
#: Other routes under /v1, whose names ``POST /v1/{model}`` does not take for a model's: a POST
#: there is a 405 (the path exists, the method does not), not a 404 for an unknown model.
RESERVED = ("get_result", "models")


class ModelNameConvertor(StringConvertor):
    """A path segment that is not one of the RESERVED names."""

    regex = "(?!(?:" + "|".join(RESERVED) + ")$)[^/]+"


register_url_convertor("bfl_model", ModelNameConvertor())


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
        loc = ["body"] if field == "body" else ["body", *field.split(".")]
        detail = [{"loc": loc, "msg": message, "type": exc.code}]
        status = 422
    elif isinstance(exc, DarkroomError):
        # BFL answers a missing or wrong key with 403 (its documented errors have no 401).
        status = 403 if isinstance(exc, Unauthorized) else exc.status_code
        detail, message = exc.message, exc.message
        if isinstance(exc, (RateLimited, StoreUnavailable)):
            headers = {"Retry-After": str(exc.retry_after)}
        if status >= 500:
            log_unexpected(request, exc)
    elif isinstance(exc, HTTPException):
        status, detail, message = exc.status_code, str(exc.detail), str(exc.detail)
        headers = dict(exc.headers) if exc.headers else None
    else:
        log_unexpected(request, exc)
        status, detail, message = 500, "Internal Server Error", "internal server error"
    return JSONResponse({"detail": detail, "message": message}, status_code=status, headers=headers)


class BflValidationItem(BaseModel):
    loc: list[str | int] = Field(description="Where: [\"body\", field] or [\"query\", name].")
    msg: str
    type: str = Field(description="invalid_field, invalid_input_image, url_not_allowed, or pydantic's error type.")


class BflError(BaseModel):
    """Every error of this dialect: FastAPI's ``detail`` (a list for validation errors, else a
    sentence) and ``message``, which the official client reads."""

    detail: list[BflValidationItem] | str
    message: str


class BflTask(BaseModel):
    id: str = Field(description="The task id (darkroom's request id).")
    polling_url: str = Field(description="Absolute URL of GET /v1/get_result for this task.")


class BflResult(BaseModel):
    id: str
    status: BflStatus
    result: dict[str, Any] | None = Field(
        description="On Ready: sample (the image URL, valid 10 minutes), prompt, seed, start_time, end_time, "
                    "duration, width, height, timings.")
    progress: float | None = Field(description="0 while queued, step/total while processing, 1 when ready.")
    details: dict[str, Any] | None = Field(description="On an error or moderation: {code, message}.")


_BFL_STATUSES: dict[int, str] = {
    403: "Missing or invalid x-key, or priority high without the grant.",
    404: "No model by that name (an id or alias).",
    409: "The Idempotency-Key was used with another body.",
    415: "The body is not sent as application/json.",
    422: "Invalid body or field: detail lists where (loc) and why.",
    429: "Over a per-key limit; see Retry-After.",
    503: "The database is unreachable; retry after Retry-After.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return dialect_error_responses(BflError, _BFL_STATUSES, codes)


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


@router.get("/v1/get_result", response_model=BflResult, responses=error_responses(403, 422, 503),
            operation_id="bfl_get_result", summary="Status and result of a task (BFL's polling_url)")
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


@router.post("/v1/{model:bfl_model}", response_model=BflTask,
             responses=error_responses(403, 404, 405, 408, 409, 413, 415, 422, 429, 503),
             operation_id="bfl_submit", summary="Submit a task for a model (or alias); poll polling_url")
def submit_task(
    model: str,
    key: ApiKey = Depends(bfl_key),
    body: dict[str, Any] = Depends(json_object),
    options: SubmitOptions = Depends(submit_options),
    service: Service = Depends(get_service),
) -> dict[str, str]:
    """The body is the model's payload fields at top level, plus optional webhook_url,
    webhook_secret and priority (see each model's own route in the OpenAPI document)."""
    if model in FLUX2_ROUTES:
        service.registry.get(model)  # an unknown name is a 404 first, whatever its body
        _check_flux2(body)
    payload = sized(body)
    submitted = service.submit(key, model, payload, replace(options, dialect=DIALECT))
    base = (options.base_url or "").rstrip("/")
    return {"id": submitted.request.id, "polling_url": f"{base}/v1/get_result?id={submitted.request.id}"}


def _check_flux2(body: dict[str, Any]) -> None:
    """What BFL's FLUX.2 routes refuse whatever the model behind them takes."""
    tolerance = body.get("safety_tolerance")
    if isinstance(tolerance, int) and not isinstance(tolerance, bool) and tolerance > FLUX2_MAX_SAFETY_TOLERANCE:
        raise InvalidField("safety_tolerance", f"must be at most {FLUX2_MAX_SAFETY_TOLERANCE} on FLUX.2 routes "
                                               f"(BFL's range is 0-{FLUX2_MAX_SAFETY_TOLERANCE}), got {tolerance}")


def sized(body: dict[str, Any]) -> dict[str, Any]:
    """BFL's text-to-image inputs give ``width`` and ``height`` (the official client always
    sends them for flux-pro-1.1 and flux-dev); darkroom models take an aspect ratio at about
    one megapixel, so the pair becomes the nearest ratio (``aspect_ratio``, if also given,
    wins). Each is an integer from 1 to MAX_SIDE, and one needs the other. Anything else is
    left to validation."""
    if "width" not in body and "height" not in body:
        return body
    for name, other in (("width", "height"), ("height", "width")):
        value = body.get(name)
        if name not in body:
            raise InvalidField(name, f"is required with {other}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
            raise InvalidField(name, f"must be an integer from 1 to {MAX_SIDE}")
    out = {k: v for k, v in body.items() if k not in ("width", "height")}
    out.setdefault("aspect_ratio", nearest_ratio(body["width"], body["height"]))
    return out
