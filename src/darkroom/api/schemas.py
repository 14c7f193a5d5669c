"""Wire shapes of the primary (request-queue) dialect, for validation and the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StatusWord = Literal["queued", "processing", "success", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_field, request_not_found.")
    message: str = Field(description="What went wrong, naming the field where there is one.")
    field: str | None = Field(None, description="The offending field, e.g. payload.seed.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model id (or alias), e.g. darkroom-mini.")
    payload: dict[str, Any] = Field(description="Generation parameters; see the model's `parameters`.")
    webhook_url: str | None = Field(None, max_length=2048,
                                    description="Called with the status object when the request ends.")
    webhook_secret: str | None = Field(None, max_length=512, description="Signs webhook deliveries (HMAC-SHA256).")
    priority: Literal["high", "normal", "low"] | None = Field(
        None, description="Queue priority (also the X-Priority header); high needs the operator's grant.")


class SubmitResponse(BaseModel):
    request_id: str
    model: str
    status: StatusWord
    created_at: int
    updated_at: int
    queued_at: int


class MediaUrl(BaseModel):
    id: str
    url: str = Field(description="Absolute, signed and expiring URL of the image.")


class Progress(BaseModel):
    step: int
    total: int


class WebhookDeliveryInfo(BaseModel):
    id: str = Field(description="Stable delivery id, sent as the webhook-id header.")
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None = None
    last_status_code: int | None = None
    delivered_at: int | None = None
    next_attempt_at: int | None = Field(None, description="When the next attempt is due (pending only).")


class Preview(BaseModel):
    step: int
    url: str = Field(description="Signed URL of a small JPEG decoded from the current latents.")


class Outcome(BaseModel):
    """On success: media_urls and how the image was made. On failure or cancel: error."""

    model_config = ConfigDict(extra="allow")

    media_urls: list[MediaUrl] | None = None
    seed: int | None = Field(None, description="The seed actually used.")
    width: int | None = None
    height: int | None = None
    output_format: str | None = None
    prompt: str | None = Field(None, description="The prompt as run (after upsampling).")
    timings: dict[str, float] | None = Field(None, description="Milliseconds: queued, engine, encode_store, total.")
    error: ErrorDetail | None = None


class StatusObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    request_id: str
    org_id: str
    model: str
    status: StatusWord
    is_public: bool
    payload: dict[str, Any]
    outcome: Outcome | None
    created_at: int
    updated_at: int
    queued_at: int
    started_at: int | None = None
    finished_at: int | None = None
    attempts: int = 0
    progress: Progress | None = Field(None, description="Denoising step while processing.")
    queue_position: int | None = Field(None, description="Requests ahead of this one while queued.")
    preview: Preview | None = Field(None, description="The latest low-resolution preview while processing.")
    webhooks: list[WebhookDeliveryInfo] | None = Field(
        None, description="Deliveries of this request's webhook (when it set webhook_url).")


class RequestList(BaseModel):
    requests: list[StatusObject]
    total: int
    limit: int
    offset: int


class ParameterRecord(BaseModel):
    # extra: ``edit_default``, only on parameters whose default differs for edits (see engines/params.py)
    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    required: bool
    default: Any = None
    description: str
    constraints: dict[str, Any]


class Modalities(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: list[str] = Field(description="text, and image for models that take input images.")
    output: list[str]
    max_input_images: int | None = Field(None, description="How many input images the model takes (0: none).")


class ModelRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    brief_description: str
    detailed_description: str
    model_type: str
    modalities: Modalities
    parameters: list[ParameterRecord]
    tags: list[str]
    aliases: list[str]
    created_at: int
    updated_at: int
    qworkers: int
    org_id: str
    host_type: Literal["", "internal", "external"]


class ModelList(BaseModel):
    model_ids: list[str]
    models: list[ModelRecord]


RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "Seconds to wait."}}

#: Answers given before any route runs, so in this shape whatever the dialect: the router's 405
#: and the body limits' 408 and 413 (``api/limits.py``).
SHARED_RESPONSES: dict[int, dict[str, Any]] = {
    405: {"model": ErrorResponse, "description": "No route takes this method at this path (method_not_allowed); "
                                                 "Allow lists those that do.",
          "headers": {"Allow": {"schema": {"type": "string"}, "description": "The methods this path takes."}}},
    408: {"model": ErrorResponse, "description": "The body did not arrive in time (request_timeout); "
                                                 "the connection is closed."},
    413: {"model": ErrorResponse, "description": "Body or input image too large (payload_too_large)."},
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key (unauthorized).",
          "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}},
    403: {"model": ErrorResponse, "description": "Not allowed for this key (priority_not_allowed, admin_required)."},
    404: {"model": ErrorResponse, "description": "Unknown model or request (model_not_found, request_not_found)."},
    409: {"model": ErrorResponse,
          "description": "Illegal state change (invalid_state), or an Idempotency-Key reused with another body "
                         "(idempotency_conflict)."},
    **SHARED_RESPONSES,
    415: {"model": ErrorResponse, "description": "The body is not sent as application/json (unsupported_media_type)."},
    422: {"model": ErrorResponse, "description": "Invalid body or field (invalid_field, invalid_input_image, "
                                                 "url_not_allowed); field names it."},
    429: {"model": ErrorResponse, "description": "Over a per-key limit (rate_limited); see Retry-After.",
          "headers": RETRY_AFTER},
    503: {"model": ErrorResponse, "description": "The database is unreachable (store_unavailable); see Retry-After.",
          "headers": RETRY_AFTER},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: ERROR_RESPONSES[c] for c in codes}


def dialect_error_responses(shape: type[BaseModel], descriptions: dict[int, str],
                            codes: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for ``codes`` in a dialect's error ``shape`` (405, 408 and 413: the
    request-queue shape, whatever the dialect: SHARED_RESPONSES); 429 and 503 carry Retry-After."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        if code in SHARED_RESPONSES:
            out[code] = SHARED_RESPONSES[code]
            continue
        out[code] = {"model": shape, "description": descriptions[code]}
        if code in (429, 503):
            out[code]["headers"] = RETRY_AFTER
    return out
