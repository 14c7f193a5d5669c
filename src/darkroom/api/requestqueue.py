"""The primary dialect: the hosted request-queue API (see docs/api.md and the contract)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from darkroom.api import render
from darkroom.api.body import json_object, validated
from darkroom.api.deps import base_url, bearer_key, get_service, submit_options
from darkroom.api.schemas import (
    ModelList,
    ModelRecord,
    RequestList,
    StatusObject,
    StatusWord,
    SubmitBody,
    SubmitResponse,
    error_responses,
)
from darkroom.domain import ApiKey, SubmitOptions
from darkroom.service import Service, parse_priority

PREFIXES = ("/api/v1/ie/requestqueue/apikey", "/api/v1/ie/requestqueue")
MAX_OFFSET = 2_147_483_647

# Handlers are plain `def`: FastAPI runs them in its thread pool, so the synchronous
# service and store never block the event loop.
router = APIRouter(tags=["request queue"])


@router.post("/requests", response_model=SubmitResponse,
             responses=error_responses(401, 403, 404, 408, 409, 413, 415, 422, 429, 503),
             operation_id="submit_request", summary="Submit a generation request")
def submit_request(
    response: Response,
    key: ApiKey = Depends(bearer_key),
    data: dict[str, Any] = Depends(json_object),
    options: SubmitOptions = Depends(submit_options),
    service: Service = Depends(get_service),
) -> dict:
    """The body is a SubmitBody: one variant per model (``model`` says which), each with that
    model's payload (see the OpenAPI document's ``Payload_<model>`` schemas)."""
    body = validated(SubmitBody, data)
    options = replace(options, webhook_url=body.webhook_url, webhook_secret=body.webhook_secret,
                      priority=parse_priority(body.priority) if body.priority else options.priority)
    submitted = service.submit(key, body.model, body.payload, options)
    if not submitted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return render.submit_object(submitted.request)


@router.get("/requests/{request_id}", response_model=StatusObject, responses=error_responses(401, 404, 503),
            operation_id="get_request", summary="Status of one of your requests")
async def get_request(
    request_id: str,
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict:
    # An ended request read recently comes from memory, on the event loop; anything else is
    # read from the store in the thread pool.
    request = service.ended_request(key, request_id)
    if request is not None:
        return render.status_object(service, base, request)
    return await run_in_threadpool(_status, service, key, request_id, base)


def _status(service: Service, key: ApiKey, request_id: str, base: str) -> dict:
    request = service.get_request(key, request_id)
    return render.status_object(service, base, request, queue_position=service.queue_position(request))


@router.get("/requests", response_model=RequestList, responses=error_responses(401, 404, 422, 503),
            operation_id="list_requests", summary="List your requests, newest first")
def list_requests(
    model_id: str | None = Query(None, description="Only requests for this model."),
    status: StatusWord | None = Query(None, description="Only requests in this status."),
    limit: int = Query(50, ge=1, le=100),
    # Bounded: the database takes a 64-bit OFFSET at most (a larger one was a 500).
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict:
    page = service.list_requests(key, model=model_id, status=status, limit=limit, offset=offset)
    return {
        "requests": [render.status_object(service, base, r) for r in page.items],
        "total": page.total,
        "limit": limit,
        "offset": offset,
    }


@router.post("/requests/{request_id}/cancel", response_model=StatusObject,
             responses=error_responses(401, 404, 409, 503), operation_id="cancel_request", summary="Cancel a request (queued: at once; processing: at the next denoising step)")
def cancel_request(
    request_id: str,
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict:
    request = service.cancel_request(key, request_id)
    return render.status_object(service, base, request)


@router.get("/models/{model_id}", response_model=ModelRecord, responses=error_responses(401, 404, 503),
            operation_id="get_model", summary="Model information, with its parameters")
def get_model(
    model_id: str,
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
) -> dict:
    return service.model_record(model_id)


@router.get("/models", response_model=ModelList, responses=error_responses(401, 503), operation_id="list_models",
            summary="List models")
def list_models(key: ApiKey = Depends(bearer_key), service: Service = Depends(get_service)) -> dict:
    records = service.model_records()
    return {"model_ids": [r["model"] for r in records], "models": records}
