"""The primary dialect: the hosted request-queue API (see docs/api.md and the contract)."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Query

from darkroom.api import render
from darkroom.api.deps import base_url, bearer_key, get_service
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
from darkroom.domain import ApiKey
from darkroom.service import Service

PREFIXES = ("/api/v1/ie/requestqueue/apikey", "/api/v1/ie/requestqueue")

# Handlers are plain `def`: FastAPI runs them in its thread pool, so the synchronous
# service and store never block the event loop.
router = APIRouter(tags=["request queue"])


@router.post("/requests", response_model=SubmitResponse, responses=error_responses(401, 404, 413, 422),
             summary="Submit a generation request")
def submit_request(
    body: SubmitBody = Body(...),
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
) -> dict:
    request = service.submit(key, body.model, body.payload)
    return render.submit_object(request)


@router.get("/requests/{request_id}", response_model=StatusObject, responses=error_responses(401, 404),
            summary="Status of one of your requests")
def get_request(
    request_id: str,
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict:
    request = service.get_request(key, request_id)
    return render.status_object(service, base, request, queue_position=service.queue_position(request))


@router.get("/requests", response_model=RequestList, responses=error_responses(401, 404, 422),
            summary="List your requests, newest first")
def list_requests(
    model_id: str | None = Query(None, description="Only requests for this model."),
    status: StatusWord | None = Query(None, description="Only requests in this status."),
    limit: int = Query(50, ge=1, le=100),
    offset: int = Query(0, ge=0),
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


@router.post("/requests/{request_id}/cancel", response_model=StatusObject, responses=error_responses(401, 404, 409),
             summary="Cancel a request (queued: at once; processing: at the next denoising step)")
def cancel_request(
    request_id: str,
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
) -> dict:
    request = service.cancel_request(key, request_id)
    return render.status_object(service, base, request)


@router.get("/models/{model_id}", response_model=ModelRecord, responses=error_responses(401, 404),
            summary="Model information, with its parameters")
def get_model(
    model_id: str,
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
) -> dict:
    return service.model_record(model_id)


@router.get("/models", response_model=ModelList, responses=error_responses(401), summary="List models")
def list_models(key: ApiKey = Depends(bearer_key), service: Service = Depends(get_service)) -> dict:
    records = service.model_records()
    return {"model_ids": [r["model"] for r in records], "models": records}
