"""The OpenAI Images dialect: ``POST /v1/images/generations`` and ``/v1/images/edits``.

Synchronous on the wire, queued inside: a call submits ``n`` ordinary requests through
``Service.submit`` and waits for them on the event loop (``asyncio.sleep`` between looks
at the store, each look in the thread pool), so a waiting call holds no thread. It gives
up after ``settings.sync_wait_s`` (504) and cancels what it queued when it fails, times
out or its client goes away. What is accepted, mapped or ignored: docs/dialects.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from darkroom.api import render
from darkroom.api.body import json_object, validated
from darkroom.api.deps import base_url, bearer_key, get_service, submit_options
from darkroom.api.dialect import error_route, log_unexpected
from darkroom.api.openai_params import (
    Call,
    ImageParams,
    OpenAIError,
    form_params,
    map_call,
)
from darkroom.api.schemas import dialect_error_responses
from darkroom.domain import ApiKey, Status, SubmitOptions
from darkroom.domain import Request as QueuedRequest
from darkroom.engines.params import INPUT_IMAGE_FIELDS
from darkroom.errors import (
    Conflict,
    DarkroomError,
    InvalidField,
    ModelNotFound,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
)
from darkroom.service import Service
from darkroom.wakeup import AsyncHub

log = logging.getLogger(__name__)

DIALECT = "openai"


def openai_error(request: Request, exc: Exception) -> Response:
    """``{"error": {"message", "type", "param", "code"}}`` with OpenAI's HTTP statuses."""
    headers: dict[str, str] = {}
    if isinstance(exc, OpenAIError):
        status, body = exc.status, _error_body(exc.message, exc.kind, exc.param, exc.code)
    elif isinstance(exc, RequestValidationError):
        status, body = 400, _validation_body(exc)
    elif isinstance(exc, DarkroomError):
        status, body = _darkroom_error(exc)
        if isinstance(exc, (RateLimited, StoreUnavailable)):
            headers["Retry-After"] = str(exc.retry_after)
        if status >= 500:
            log_unexpected(request, exc)
    elif isinstance(exc, HTTPException):
        status = 400 if exc.status_code == 422 else exc.status_code
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = _error_body(str(exc.detail), kind, None, None)
        headers.update(exc.headers or {})
    else:
        log_unexpected(request, exc)
        status, body = 500, _error_body("The server had an error while processing your request.", "server_error",
                                        None, None)
    # The official client retries 408/409/429/5xx; a retry here would queue the work again.
    if status not in (429, 503):
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=status, headers=headers)


def _error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    """A parameter of the wrong type, an unknown or a missing one, as OpenAI words them."""
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    kind = first.get("type")
    if kind == "extra_forbidden":
        return _error_body(f"Unknown parameter: '{param}'.", "invalid_request_error", param, "unknown_parameter")
    if kind == "missing":
        return _error_body(f"Missing required parameter: '{param}'.", "invalid_request_error", param,
                           "missing_required_parameter")
    if kind == "json_invalid":
        return _error_body("We could not parse the JSON body of your request.", "invalid_request_error", None,
                           "invalid_value")
    message = f"Invalid value for '{param}': " if param else "Invalid request body: "
    return _error_body(message + str(first.get("msg", "invalid")), "invalid_request_error", param, "invalid_value")


def _darkroom_error(exc: DarkroomError) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, Unauthorized):
        return 401, _error_body(exc.message, "invalid_request_error", None, "invalid_api_key")
    if isinstance(exc, ModelNotFound):
        return 404, _error_body(exc.message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, InvalidField):
        code = "invalid_value" if exc.code == "invalid_field" else exc.code
        param = _param(exc.field)
        message = f"{param}: {exc.message.removeprefix(f'{exc.field}: ')}" if exc.field else exc.message
        return 400, _error_body(message, "invalid_request_error", param, code)
    if isinstance(exc, RateLimited):
        return 429, _error_body(exc.message, "requests", None, "rate_limit_exceeded")
    kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return exc.status_code, _error_body(exc.message, kind, _param(exc.field), exc.code)


def _param(field: str | None) -> str | None:
    """A darkroom field name as the OpenAI parameter it came from (the body as a whole: none)."""
    if field is None or field == "body":
        return None
    name = field.removeprefix("payload.")
    return "image" if name in INPUT_IMAGE_FIELDS else name


router = APIRouter(prefix="/v1", tags=["OpenAI Images dialect"], route_class=error_route(openai_error))


# -- running a call ---------------------------------------------------------------------------


async def run_call(request: Request, service: Service, key: ApiKey, options: SubmitOptions, base: str,
                   call: Call) -> dict[str, Any]:
    """Submit, wait, answer; cancel what was queued if the call does not end well."""
    ids: list[str] = []
    try:
        ids = await run_in_threadpool(_submit_all, service, key, options, call, ids)
        finished = await _wait(request, service, key, ids)
        return await run_in_threadpool(_answer, service, base, call, finished)
    except BaseException:  # also asyncio.CancelledError, when the server stops the task
        if ids:
            await asyncio.shield(run_in_threadpool(_cancel_all, service, key, ids))
        raise


def _submit_all(service: Service, key: ApiKey, options: SubmitOptions, call: Call, ids: list[str]) -> list[str]:
    """Queue each payload (appending to ``ids`` as it goes, so a failure part-way cancels the rest)."""
    for i, payload in enumerate(call.payloads):
        # One Idempotency-Key for the call: each of its requests gets its own derived key.
        idem = f"{options.idempotency_key}/{i}" if options.idempotency_key else None
        submitted = service.submit(key, call.model, payload, replace(options, dialect=DIALECT, idempotency_key=idem))
        ids.append(submitted.request.id)
    return ids


def _cancel_all(service: Service, key: ApiKey, ids: list[str]) -> None:
    for request_id in ids:
        try:
            service.cancel_request(key, request_id)
        except DarkroomError:
            pass  # already ended


async def _wait(request: Request, service: Service, key: ApiKey, ids: list[str]) -> list[QueuedRequest]:
    """Until every request succeeded (or one did not): read them whenever the store signals a
    change to the first unfinished one (``darkroom.wakeup``), so the answer leaves as soon as the
    last image is stored. Subscribed before the first read, so no change is missed."""
    deadline = time.monotonic() + service.settings.sync_wait_s
    hub: AsyncHub = request.app.state.hub
    with contextlib.ExitStack() as stack:
        subscriptions = {i: stack.enter_context(hub.subscribe(i)) for i in ids}
        while True:
            current = await run_in_threadpool(lambda: [service.get_request(key, i) for i in ids])
            for r in current:
                if r.status.is_terminal and r.status != Status.SUCCESS:
                    raise _failure(r)
            pending = [r.id for r in current if r.status != Status.SUCCESS]
            if not pending:
                return current
            if time.monotonic() > deadline:
                raise OpenAIError(504, f"The images were not ready within {service.settings.sync_wait_s:.0f} s; "
                                       "the requests were cancelled.", code="timeout", kind="server_error")
            if await request.is_disconnected():
                log.info("client went away while waiting for %s; cancelling", ", ".join(ids))
                raise OpenAIError(499, "client closed the request", code="client_closed")
            # A short timeout: it bounds how late a client that went away is noticed, not how
            # late a finished image is (the signal wakes this at once).
            await subscriptions[pending[0]].changed(min(1.0, max(0.0, deadline - time.monotonic()) + 0.01))


def _failure(request: QueuedRequest) -> Exception:
    """A failed request as the call's error: moderation is OpenAI's content_policy_violation."""
    error = request.error or {"code": request.status.value, "message": request.status.value}
    code, message = error.get("code", "engine_error"), error.get("message", "")
    if code in ("input_moderated", "output_moderated"):
        return OpenAIError(400, f"Your request was rejected by the safety system: {message}",
                           code="content_policy_violation")
    if code == "invalid_input_image":
        return OpenAIError(400, message, code="invalid_input_image", param="image")
    if request.status == Status.CANCELLED:
        return Conflict(f"request {request.id} was cancelled", code="cancelled")
    return OpenAIError(500, f"Image generation failed: {message} ({code})", code=code, kind="server_error")


def _answer(service: Service, base: str, call: Call, finished: list[QueuedRequest]) -> dict[str, Any]:
    data = []
    for r in finished:
        outcome = r.outcome or {}
        item: dict[str, Any] = {"revised_prompt": outcome.get("prompt")}
        if call.response_format == "url":
            item["url"] = render.media_urls(service, base, outcome)[0]["url"]
        else:
            item["b64_json"] = base64.b64encode(service.blobs.get(outcome["media"][0]["key"])).decode()
        data.append(item)
    first = finished[0].outcome or {}
    return {"created": int(time.time()), "data": data, "output_format": call.output_format,
            "size": f"{first.get('width')}x{first.get('height')}", "background": "opaque"}


# -- routes -----------------------------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, requests (429) or server_error.")
    param: str | None = Field(description="The parameter at fault, if one is.")
    code: str | None = Field(description="invalid_value, unknown_parameter, unsupported_parameter, "
                                         "missing_required_parameter, invalid_input_image, content_policy_violation, "
                                         "invalid_api_key, model_not_found, rate_limit_exceeded, timeout, ...")


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


class ImageData(BaseModel):
    url: str | None = Field(None, description="With response_format url: a signed, expiring URL.")
    b64_json: str | None = Field(None, description="With response_format b64_json (the default): the image.")
    revised_prompt: str | None = Field(None, description="The prompt as run (after upsampling).")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str
    background: str


class ModelObject(BaseModel):
    id: str
    object: str
    created: int
    owned_by: str


class ModelObjectList(BaseModel):
    object: str
    data: list[ModelObject]


_OPENAI_STATUSES: dict[int, str] = {
    400: "Invalid, unknown, unsupported or missing parameter; invalid input image; content policy violation.",
    401: "Missing or invalid API key (invalid_api_key).",
    403: "priority high without the grant (priority_not_allowed).",
    404: "No model by that name (model_not_found).",
    409: "The Idempotency-Key was used with another body, or a request was cancelled elsewhere.",
    415: "The body is not sent as the route takes it (unsupported_media_type).",
    429: "Over a per-key limit (rate_limit_exceeded); see Retry-After.",
    500: "Image generation failed (engine_error, worker_lost, out_of_memory, ...).",
    503: "The database is unreachable (store_unavailable); see Retry-After.",
    504: "The images were not ready within the server's wait (timeout); their requests were cancelled.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return dialect_error_responses(OpenAIErrorBody, _OPENAI_STATUSES, codes)


CALL_ERRORS = error_responses(400, 401, 403, 404, 408, 409, 413, 415, 429, 500, 503, 504)


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
             responses=CALL_ERRORS, operation_id="openai_create_images",
             summary="Generate images and wait for them (OpenAI Images)")
async def create_images(
    request: Request,
    key: ApiKey = Depends(bearer_key),
    body: dict[str, Any] = Depends(json_object),
    options: SubmitOptions = Depends(submit_options),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict[str, Any]:
    """OpenAI's image generation parameters, and darkroom's payload fields as extensions (one
    body schema per model in the OpenAPI document; see docs/dialects.md)."""
    params = validated(ImageParams, body).model_dump(exclude_unset=True)
    call = await run_in_threadpool(map_call, service, params)
    return await run_call(request, service, key, options, base, call)


@router.post("/images/edits", response_model=ImagesResponse, response_model_exclude_none=True,
             responses=CALL_ERRORS, operation_id="openai_edit_images",
             summary="Edit images with an image-editing model and wait (OpenAI Images, multipart)")
async def edit_images(
    request: Request,
    key: ApiKey = Depends(bearer_key),
    options: SubmitOptions = Depends(submit_options),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict[str, Any]:
    """A multipart/form-data body: ``image`` (one or more files), ``prompt`` and the other
    parameters as text parts (see docs/dialects.md)."""
    form, images = await form_params(request)
    params = validated(ImageParams, form).model_dump(exclude_unset=True)
    call = await run_in_threadpool(map_call, service, params, images)
    return await run_call(request, service, key, options, base, call)


def _model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "darkroom"}


@router.get("/models", response_model=ModelObjectList, responses=error_responses(401, 503),
            operation_id="openai_list_models", summary="Models and their aliases (OpenAI's model list)")
def list_models(key: ApiKey = Depends(bearer_key), service: Service = Depends(get_service)) -> dict[str, Any]:
    data = [_model_object(name, spec.created_at)
            for spec in service.registry.models.values() for name in (spec.id, *spec.aliases)]
    return {"object": "list", "data": data}


@router.get("/models/{model}", response_model=ModelObject, responses=error_responses(401, 404, 503),
            operation_id="openai_get_model", summary="One model (OpenAI's model object)")
def get_model(model: str, key: ApiKey = Depends(bearer_key), service: Service = Depends(get_service)) -> dict:
    spec = service.registry.get(model)
    return _model_object(model, spec.created_at)
