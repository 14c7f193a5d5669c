"""Following a request's events stream, free of I/O: text in, status updates out.

``wait()`` reads ``GET .../requests/{id}/events`` (docs/events.md) instead of polling.
The server's events are partial (``status`` carries the status word, queue position and
progress; ``progress`` only the step), so ``StatusStream`` merges each into the last
full status object the client knows, and ``on_update`` keeps getting the same
``RequestStatus`` a GET returns. Both clients use it; only the reading differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

from ._errors import DarkroomError
from ._models import RequestStatus, Status
from ._sse import ServerSentEvent, SSEDecoder

EVENT_STREAM = "text/event-stream"

#: How long a stream may stay silent before the client calls it dead and reconnects. The
#: server sends a keep-alive comment after 15 s without events; this leaves as much again.
STREAM_IDLE_TIMEOUT = 30.0

#: How far past the wait's deadline a blocking read may still end. A read timeout is fixed
#: when the stream opens, so the clients reopen it with a shorter one when an open stream
#: could otherwise outlive the deadline by more than this (see ``Waiter.stream_overruns``).
DEADLINE_SLACK = 1.0


class Ending(Enum):
    """Why one connection's reading stopped before ``done``."""

    ENDED = "ended"  # the server closed it (its time limit) or it broke off cleanly
    REOPEN = "reopen"  # its read timeout would outlive the wait's deadline: open a fresh one


ENDED, REOPEN = Ending.ENDED, Ending.REOPEN


@dataclass(frozen=True)
class StreamUpdate:
    """What one event means for the wait.

    ``done`` is set by the ``done`` event: ``status`` is then the final status object,
    or ``None`` when the event's data was not a usable one (the caller GETs it).
    Otherwise ``status`` is the merged current status to observe.
    """

    status: RequestStatus | None
    done: bool = False


class StatusStream:
    """Turns one request's events into ``StreamUpdate``s, across reconnects.

    Args:
        last: the latest full status known (the seeding GET's); events merge into it.

    ``last_event_id`` is what a reconnect sends as ``Last-Event-ID``. Call
    ``reconnect()`` before feeding a new connection's text.
    """

    def __init__(self, last: RequestStatus) -> None:
        self.last = last
        self._decoder = SSEDecoder()
        self._last_event_id: str | None = None

    @property
    def last_event_id(self) -> str | None:
        return self._decoder.last_event_id or self._last_event_id

    def reconnect(self) -> None:
        """Start on a new connection's text; the last event id carries over."""
        self._last_event_id = self.last_event_id
        self._decoder = SSEDecoder()

    def feed(self, chunk: str) -> list[StreamUpdate]:
        """The updates in the next piece of the stream's text."""
        updates = []
        for event in self._decoder.feed(chunk):
            update = self._apply(event)
            if update is not None:
                updates.append(update)
        return updates

    def _apply(self, event: ServerSentEvent) -> StreamUpdate | None:
        try:
            data = event.json()
        except ValueError:
            data = None
        if event.event == "done":
            return StreamUpdate(self._final(data), done=True)
        if not isinstance(data, dict):
            return None  # not an event this client knows how to read: ignore it
        if event.event == "status":
            fields = {k: data[k] for k in ("status", "queue_position", "progress") if k in data}
        elif event.event == "progress":
            fields = {"progress": {"step": data.get("step"), "total": data.get("total")}}
        elif event.event == "preview":
            fields = {"preview": data}
        else:
            return None  # a newer server's event: ignore it
        merged = self._merge(fields)
        if merged is None:
            return None
        if merged.status.is_terminal:
            # Success without its outcome would show an on_update a result with no URLs:
            # ``done`` comes next with the full object, so the terminal word waits for it.
            return None
        self.last = merged
        return StreamUpdate(merged)

    def _merge(self, fields: dict[str, Any]) -> RequestStatus | None:
        raw = {**self.last.raw, **fields}
        if raw.get("preview") and raw.get("status") != Status.PROCESSING.value:
            raw["preview"] = None  # as in the status object: a preview only while processing
        try:
            return RequestStatus.from_json(raw)
        except DarkroomError:
            return None  # e.g. a status word this client does not know

    def _final(self, data: object) -> RequestStatus | None:
        if not isinstance(data, dict) or data.get("request_id") != self.last.request_id:
            return None
        try:
            status = RequestStatus.from_json(data)
        except DarkroomError:
            return None
        return status if status.done else None


def is_event_stream(response: httpx.Response) -> bool:
    """True for a 2xx answer that is an event stream (not, say, a proxy's HTML page)."""
    content_type = response.headers.get("content-type", "")
    return response.is_success and content_type.split(";")[0].strip().lower() == EVENT_STREAM


def stream_failure(response: httpx.Response | None, exc: Exception | None) -> str:
    """Why a connection gave no final status, for the log."""
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"
    if response is not None:
        return f"HTTP {response.status_code} {response.headers.get('content-type', '')}".rstrip()
    return "the stream ended before done"
