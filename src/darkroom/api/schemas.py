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


class ModelRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    brief_description: str
    detailed_description: str
    model_type: str
    modalities: dict[str, list[str]]
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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key (unauthorized)."},
    403: {"model": ErrorResponse, "description": "Not allowed for this key (priority_not_allowed)."},
    404: {"model": ErrorResponse, "description": "Unknown model or request (model_not_found, request_not_found)."},
    409: {"model": ErrorResponse,
          "description": "Illegal state change (invalid_state), or an Idempotency-Key reused with another body "
                         "(idempotency_conflict)."},
    413: {"model": ErrorResponse, "description": "Body or image too large (payload_too_large)."},
    422: {"model": ErrorResponse, "description": "Invalid field (invalid_field, invalid_input_image)."},
    429: {"model": ErrorResponse, "description": "Over a per-key limit (rate_limited); see Retry-After.",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: ERROR_RESPONSES[c] for c in codes}
