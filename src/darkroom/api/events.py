"""Live events for one request, as Server-Sent Events (see docs/events.md).

``GET .../requests/{request_id}/events`` streams what changes while a request runs:

- ``status``: the status word changed (or, while queued, the queue position);
- ``progress``: a new denoising step;
- ``preview``: a new low-resolution preview image (a signed URL);
- ``done``: the request ended; the full status object, then the stream closes.

The first events describe the current state, so a client that connects late (or
reconnects) needs no separate GET. A stream sleeps until the store signals a change to
its request (``darkroom.wakeup``: the worker's claim, each progress flush, the finish),
then reads the request once, from the thread pool; no database connection is held while
it waits. ``events_poll_s`` is only a safety net for a lost signal.
The I/O-free parts (``EventTracker``, ``format_event``, ``event_stream``) take plain
values and functions so that they can be tested without a server.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from darkroom.api import render
from darkroom.api.deps import base_url, bearer_key, get_service
from darkroom.api.requestqueue import PREFIXES
from darkroom.api.schemas import error_responses
from darkroom.domain import ApiKey, Status
from darkroom.service import Service
from darkroom.wakeup import AsyncHub

log = logging.getLogger(__name__)

#: What a disconnected EventSource waits before it reconnects (the ``retry:`` field).
RETRY_MS = 2000

router = APIRouter(tags=["request queue"])


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw of a request, already in wire shapes."""

    status: Status
    queue_position: int | None  # while queued
    progress: dict[str, int] | None  # {"step", "total"} once the worker has reported one
    preview: dict[str, Any] | None  # {"step", "url"} while processing, once there is one
    final: dict[str, Any] | None  # the full status object, once the request has ended


class EventTracker:
    """Turns successive snapshots into the events a client has not seen yet.

    ``status`` when the status word or queue position changes, ``progress`` when the
    step changes while processing, ``preview`` when a preview newer than the last one
    sent appears, and after a terminal status ``done``; then ``finished`` is True.
    """

    def __init__(self) -> None:
        self._status: tuple[Status, int | None] | None = None
        self._step: int | None = None
        self._preview_step: int | None = None
        self.finished = False

    def events(self, snap: Snapshot) -> list[tuple[str, dict[str, Any]]]:
        if self.finished:
            return []
        out: list[tuple[str, dict[str, Any]]] = []
        status = (snap.status, snap.queue_position if snap.status == Status.QUEUED else None)
        if status != self._status:
            if snap.status != Status.PROCESSING:
                # Back in the queue (a requeue after a worker was lost) starts the steps over.
                self._step = self._preview_step = None
            self._status = status
            out.append(("status", {"status": snap.status.value, "queue_position": status[1],
                                   "progress": snap.progress}))
        if snap.status == Status.PROCESSING and snap.progress and snap.progress["step"] != self._step:
            self._step = snap.progress["step"]
            out.append(("progress", dict(snap.progress)))
        if snap.preview and snap.preview["step"] != self._preview_step:
            self._preview_step = snap.preview["step"]
            out.append(("preview", dict(snap.preview)))
        if snap.status.is_terminal:
            self.finished = True
            out.append(("done", snap.final or {}))
        return out


def format_event(event: str, data: dict[str, Any], event_id: int) -> str:
    """One SSE message. Compact JSON never contains a newline, so one ``data:`` line suffices."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def event_stream(
    fetch: Callable[[], Awaitable[Snapshot]],
    first: Snapshot,
    is_disconnected: Callable[[], Awaitable[bool]],
    *,
    poll_s: float,
    keepalive_s: float,
    max_s: float,
    last_id: int = 0,
    changed: Callable[[float], Awaitable[bool]] | None = None,
) -> AsyncIterator[str]:
    """The SSE text of one request's events, from ``first`` on, until it ends.

    Reads ``fetch`` again when ``changed(timeout)`` reports a change, and at least every
    ``poll_s`` (without ``changed``: every ``poll_s``); sends a comment after ``keepalive_s`` without
    events (so proxies keep the connection); stops when ``is_disconnected()``, after
    ``done``, or after ``max_s`` (the client reconnects and gets the state again). Event
    ids continue from ``last_id`` (a reconnecting client's ``Last-Event-ID``).
    """
    tracker = EventTracker()
    started = last_sent = time.monotonic()
    event_id = last_id
    snap = first
    yield f"retry: {RETRY_MS}\n\n"
    while True:
        for name, data in tracker.events(snap):
            event_id += 1
            yield format_event(name, data, event_id)
            last_sent = time.monotonic()
        if tracker.finished:
            return
        now = time.monotonic()
        if now - started >= max_s:
            yield ": stream time limit reached; reconnect to follow on\n\n"
            return
        if now - last_sent >= keepalive_s:
            yield ": keep-alive\n\n"
            last_sent = now
        timeout = min(poll_s, max(0.0, started + max_s - now), max(0.0, last_sent + keepalive_s - now))
        if changed is None:
            await anyio.sleep(timeout)
        else:
            await changed(timeout)
        if await is_disconnected():
            return
        try:
            snap = await fetch()
        except Exception:  # e.g. the database is unreachable: end, and the client reconnects
            log.warning("events stream ended: could not read the request", exc_info=True)
            return


def take_snapshot(service: Service, key: ApiKey, request_id: str, base: str) -> Snapshot:
    """Read the request (the caller's only: RequestNotFound otherwise) into a Snapshot. Blocking."""
    request = service.get_request(key, request_id)
    progress = None
    if request.progress_total:
        progress = {"step": request.progress_step or 0, "total": request.progress_total}
    return Snapshot(
        status=request.status,
        queue_position=service.queue_position(request),
        progress=progress,
        preview=render.preview_object(service, base, request),
        final=render.status_object(service, base, request) if request.status.is_terminal else None,
    )


def _last_event_id(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


@router.get(
    "/requests/{request_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}},
              "description": "Server-Sent Events: status, progress, preview, done (see docs/events.md)."},
        **error_responses(401, 404, 503),
    },
    operation_id="request_events",
    summary="Follow one of your requests live (Server-Sent Events)",
)
async def request_events(
    request_id: str,
    request: Request,
    key: ApiKey = Depends(bearer_key),
    service: Service = Depends(get_service),
    base: str = Depends(base_url),
    last_event_id: str | None = Header(None, alias="Last-Event-ID",
                                       description="Sent by reconnecting clients: ids continue after it."),
) -> StreamingResponse:
    settings = service.settings
    hub: AsyncHub = request.app.state.hub
    # Subscribed before the first read, so that no change after that read can be missed.
    subscription = hub.subscribe(request_id)
    subscription.__enter__()
    try:
        # Read once before the stream starts, so that an unknown id or another key's request
        # is an ordinary JSON 404, not an event stream.
        first = await run_in_threadpool(take_snapshot, service, key, request_id, base)
    except BaseException:
        subscription.__exit__(None, None, None)
        raise

    async def fetch() -> Snapshot:
        return await run_in_threadpool(take_snapshot, service, key, request_id, base)

    async def stream() -> AsyncIterator[str]:
        try:
            async for chunk in event_stream(fetch, first, request.is_disconnected, poll_s=settings.events_poll_s,
                                            keepalive_s=settings.events_keepalive_s, max_s=settings.events_max_s,
                                            last_id=_last_event_id(last_event_id), changed=subscription.changed):
                yield chunk
        finally:
            subscription.__exit__(None, None, None)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        # no-transform and X-Accel-Buffering: proxies (nginx) must pass events on as they come.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


def include(app: FastAPI) -> None:
    """Mount the route under the request-queue prefixes (documented under the first)."""
    for prefix in PREFIXES:
        app.include_router(router, prefix=prefix, include_in_schema=prefix == PREFIXES[0])
