"""The operator's routes: who is working, on what. An admin key only (``darkroom keys create
--admin``); any other key gets 403 ``admin_required``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from darkroom.api.deps import bearer_key, get_service
from darkroom.api.schemas import error_responses
from darkroom.domain import ApiKey
from darkroom.errors import Forbidden
from darkroom.service import Service

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class WorkerView(BaseModel):
    id: str
    hostname: str
    pid: int
    device: str
    models: list[str]
    capacity: int = Field(description="Requests per batch (max_batch).")
    current: list[str] = Field(description="Ids of the requests it holds, as of its last heartbeat.")
    state: str = Field(description="live, draining, or silent (no heartbeat for worker_dead_after_s).")
    started_at: float
    heartbeat_at: float
    heartbeat_age_s: float


class WorkerList(BaseModel):
    workers: list[WorkerView]


async def admin_key(key: ApiKey = Depends(bearer_key)) -> ApiKey:
    if not key.admin:
        raise Forbidden("this route needs an admin key (darkroom keys update NAME --admin)", code="admin_required")
    return key


@router.get("/workers", response_model=WorkerList, responses=error_responses(401, 403, 503),
            operation_id="list_workers", summary="List workers: models, device, the requests each holds, last heartbeat")
async def list_workers(key: ApiKey = Depends(admin_key), service: Service = Depends(get_service)) -> dict[str, Any]:
    workers = await run_in_threadpool(service.store.list_workers)
    now = time.time()
    dead_after = service.settings.worker_dead_after_s

    def state(w) -> str:  # noqa: ANN001
        return "draining" if w.draining else ("silent" if now - w.heartbeat_at > dead_after else "live")

    return {"workers": [{**w.__dict__, "state": state(w), "heartbeat_age_s": round(now - w.heartbeat_at, 1)}
                        for w in workers]}
