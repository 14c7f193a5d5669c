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
import io
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from darkroom.api import render
from darkroom.api.deps import base_url, bearer_key, get_service, submit_options
from darkroom.api.dialect import error_route, log_unexpected, nearest_ratio
from darkroom.domain import ApiKey, Status, SubmitOptions
from darkroom.domain import Request as QueuedRequest
from darkroom.engines.params import INPUT_IMAGE_FIELDS
from darkroom.errors import (
    Conflict,
    DarkroomError,
    InvalidField,
    ModelNotFound,
    RateLimited,
    Unauthorized,
)
from darkroom.service import Service
from darkroom.wakeup import AsyncHub

log = logging.getLogger(__name__)

DIALECT = "openai"
MAX_N = 4
MAX_SEED = 2147483647
LOW_MODERATION_TOLERANCE = 4  # `moderation: "low"`: more permissive than the default 2, not the most

# What the official client may send, and what happens to each: mapped below, or ignored.
IGNORED = frozenset({
    "quality", "style", "user", "safety_identifier", "output_compression", "partial_images", "complexity",
    "input_fidelity", "frame_count", "frame_duration_ms", "svg",
})
MAPPED = frozenset({
    "model", "prompt", "n", "size", "response_format", "output_format", "background", "moderation", "stream",
    "image", "mask", "markup",
})
# darkroom's own payload fields, for callers that want them (extra_body in the client).
EXTENSIONS = frozenset({"seed", "steps", "guidance", "safety_tolerance", "prompt_upsampling", "aspect_ratio"})
FORM_INTS = frozenset({"n", "seed", "steps", "safety_tolerance", "output_compression", "partial_images",
                       "frame_count", "frame_duration_ms"})


class OpenAIError(Exception):
    """An error of this dialect's wire that no darkroom exception describes (an unsupported
    parameter, a content policy refusal, a timeout); rendered as is by ``openai_error``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, code="unsupported_parameter", param=param)


def openai_error(request: Request, exc: Exception) -> Response:
    """``{"error": {"message", "type", "param", "code"}}`` with OpenAI's HTTP statuses."""
    headers: dict[str, str] = {}
    if isinstance(exc, OpenAIError):
        status, body = exc.status, _error_body(exc.message, exc.kind, exc.param, exc.code)
    elif isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"Invalid value for '{param}': " if param else "Invalid request body: "
        message += str(first.get("msg", "invalid"))
        if first.get("type") == "json_invalid":
            param, message = None, "We could not parse the JSON body of your request."
        status, body = 400, _error_body(message, "invalid_request_error", param, "invalid_value")
    elif isinstance(exc, DarkroomError):
        status, body = _darkroom_error(exc)
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if status >= 500:
            log_unexpected(request, exc)
    elif isinstance(exc, HTTPException):
        status = 400 if exc.status_code == 422 else exc.status_code
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = _error_body(str(exc.detail), kind, None, None)
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
    """A darkroom field name as the OpenAI parameter it came from."""
    if field is None:
        return None
    name = field.removeprefix("payload.")
    return "image" if name in INPUT_IMAGE_FIELDS else name


router = APIRouter(prefix="/v1", tags=["OpenAI Images dialect"], route_class=error_route(openai_error))


# -- mapping the wire to payloads ----------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One generations/edits call, mapped: the model, ``n`` payloads and how to answer."""

    model: str
    payloads: list[dict[str, Any]]
    response_format: str
    output_format: str


def map_call(service: Service, params: dict[str, Any], images: list[bytes] | None = None) -> Call:
    """The darkroom requests an OpenAI call asks for. ``images`` are an edit's inputs.

    Raises OpenAIError, InvalidField (a type the wire allows but darkroom does not) or
    ModelNotFound; everything else about the payload is the service's to validate.
    """
    for name in params:
        if name not in IGNORED | MAPPED | EXTENSIONS:
            raise OpenAIError(400, f"Unknown parameter: '{name}'.", code="unknown_parameter", param=name)
    if params.get("stream"):
        raise unsupported("stream", "Streaming is not supported by this server; omit 'stream'.")
    for name in ("mask", "markup"):
        if params.get(name) is not None:
            raise unsupported(name, f"'{name}' is not supported: darkroom edits the whole image from the prompt.")
    if params.get("background") not in (None, "auto", "opaque"):
        raise unsupported("background", "Transparent backgrounds are not supported; use 'auto' or 'opaque'.")

    model = params.get("model") or service.registry.default
    if not model:
        raise OpenAIError(400, "you must provide a model parameter", code="missing_required_parameter",
                          param="model")
    spec = service.registry.get(model)
    if images is not None and not spec.editing:
        raise OpenAIError(400, f"Model '{model}' does not edit images; use a Kontext (image-editing) model.",
                          code="invalid_value", param="model")

    n = _int_in(params.get("n", 1), "n", 1, MAX_N)
    response_format = params.get("response_format") or "b64_json"
    if response_format not in ("url", "b64_json"):
        raise OpenAIError(400, "response_format must be 'url' or 'b64_json'.", code="invalid_value",
                          param="response_format")
    output_format = params.get("output_format") or "png"
    output_format = "jpeg" if output_format == "jpg" else output_format
    if output_format not in ("png", "jpeg"):
        raise unsupported("output_format", f"output_format '{output_format}' is not supported; use 'png' or 'jpeg'.")

    payload: dict[str, Any] = {k: params[k] for k in EXTENSIONS if k in params and k != "seed"}
    payload["prompt"] = params.get("prompt")
    payload["output_format"] = output_format
    if "aspect_ratio" not in payload:
        ratio = _ratio_for(params.get("size"), images)
        if ratio:
            payload["aspect_ratio"] = ratio
    moderation = params.get("moderation")
    if moderation not in (None, "auto", "low"):
        raise OpenAIError(400, "moderation must be 'auto' or 'low'.", code="invalid_value", param="moderation")
    if moderation == "low":
        payload.setdefault("safety_tolerance", LOW_MODERATION_TOLERANCE)
    for field, image in zip(INPUT_IMAGE_FIELDS, images or []):
        payload[field] = base64.b64encode(image).decode()
    if images is not None and len(images) > len(INPUT_IMAGE_FIELDS):
        raise OpenAIError(400, f"At most {len(INPUT_IMAGE_FIELDS)} images can be given.", code="invalid_value",
                          param="image")

    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidField("seed", "must be an integer")
    # Seed 0 lets each request draw its own random seed; a given seed s makes s, s+1, ...
    payloads = [{**payload, "seed": _nth_seed(seed, i)} for i in range(n)]
    return Call(model, payloads, response_format, output_format)


def _int_in(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OpenAIError(400, f"'{name}' must be an integer from {low} to {high}.", code="invalid_value",
                          param=name)
    return value


def _nth_seed(seed: int, i: int) -> int:
    if seed <= 0 or seed > MAX_SEED:
        return seed  # 0 (random) as is; out of range is the service's to refuse
    return (seed - 1 + i) % MAX_SEED + 1


def _ratio_for(size: Any, images: list[bytes] | None) -> str | None:
    """``"WxH"`` -> the nearest aspect ratio; ``auto`` (or none) -> the first input image's, or 1:1."""
    if size in (None, "auto"):
        if images:
            try:
                from PIL import Image

                with Image.open(io.BytesIO(images[0])) as im:
                    return nearest_ratio(*im.size)
            except Exception:
                return None  # unreadable: the service says so, naming the image
        return None
    width, _, height = str(size).lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) == 0 or int(height) == 0:
        raise OpenAIError(400, f"Invalid size '{size}': use 'auto' or 'WIDTHxHEIGHT', e.g. '1024x1024'.",
                          code="invalid_value", param="size")
    return nearest_ratio(int(width), int(height))


async def form_params(request: Request) -> tuple[dict[str, Any], list[bytes]]:
    """An edit's multipart fields (numbers and booleans parsed) and its images, in order."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OpenAIError(400, "Send images/edits as multipart/form-data.", code="invalid_value")
    form = await request.form(max_files=16, max_fields=64)
    params: dict[str, Any] = {}
    images: list[bytes] = []
    for name, value in form.multi_items():
        base = name.split("[", 1)[0]  # image, image[], image[0]; svg[model]
        if base == "image":
            if not isinstance(value, UploadFile):
                raise OpenAIError(400, "'image' must be a file.", code="invalid_value", param="image")
            images.append(await value.read())
            continue
        if isinstance(value, UploadFile):
            params[base] = True  # mask or markup: present (and refused); other files are unknown
            continue
        params[base] = _form_value(base, value)
    if not images:
        raise OpenAIError(400, "Missing required parameter: 'image'.", code="missing_required_parameter",
                          param="image")
    return params, images


def _form_value(name: str, value: str) -> Any:
    if name in FORM_INTS:
        try:
            return int(value)
        except ValueError:
            raise OpenAIError(400, f"'{name}' must be an integer.", code="invalid_value", param=name) from None
    if name == "guidance":
        try:
            return float(value)
        except ValueError:
            raise OpenAIError(400, "'guidance' must be a number.", code="invalid_value", param=name) from None
    if name in ("prompt_upsampling", "stream"):
        return value.strip().lower() == "true"
    return value


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

IMAGES_RESPONSE = {"description": "`{created, data: [{url | b64_json, revised_prompt}]}` (OpenAI's ImagesResponse)."}


@router.post("/images/generations", responses={200: IMAGES_RESPONSE},
             summary="Generate images and wait for them (OpenAI Images)")
async def create_images(
    request: Request,
    body: dict[str, Any] = Body(..., description="OpenAI's image generation parameters (see docs/dialects.md)."),
    key: ApiKey = Depends(bearer_key),
    options: SubmitOptions = Depends(submit_options),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict[str, Any]:
    call = map_call(service, body)
    return await run_call(request, service, key, options, base, call)


@router.post("/images/edits", responses={200: IMAGES_RESPONSE},
             summary="Edit images with a Kontext model and wait (OpenAI Images, multipart)")
async def edit_images(
    request: Request,
    key: ApiKey = Depends(bearer_key),
    options: SubmitOptions = Depends(submit_options),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict[str, Any]:
    params, images = await form_params(request)
    call = await run_in_threadpool(map_call, service, params, images)
    return await run_call(request, service, key, options, base, call)


def _model_object(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "darkroom"}


@router.get("/models", summary="Models and their aliases (OpenAI's model list)")
def list_models(key: ApiKey = Depends(bearer_key), service: Service = Depends(get_service)) -> dict[str, Any]:
    data = [_model_object(name, spec.created_at)
            for spec in service.registry.models.values() for name in (spec.id, *spec.aliases)]
    return {"object": "list", "data": data}


@router.get("/models/{model}", summary="One model (OpenAI's model object)")
def get_model(model: str, key: ApiKey = Depends(bearer_key), service: Service = Depends(get_service)) -> dict:
    spec = service.registry.get(model)
    return _model_object(model, spec.created_at)

