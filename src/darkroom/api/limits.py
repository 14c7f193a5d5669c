"""Request body limits, enforced before anything parses the body: its size (413) and the time
it may take to arrive (408).

Both answers are the middleware's own, in the request-queue error shape (``api/errors.py``)
on every route, with ``Connection: close``: the rest of a refused body is never read, and a
client that dribbles it cannot keep the connection open. The application then sees the
client as gone (``http.disconnect``) and whatever it still answers is dropped.
"""

from __future__ import annotations

import json
import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkroom.api.errors import error_body


class BodyLimits:
    """Refuses bodies over ``max_bytes`` (by Content-Length at once, else while they stream)
    and bodies that arrive too slowly.

    A body must arrive within ``read_timeout_s`` of the request's headers, a deadline that
    every ``min_rate_bytes_s`` bytes received push back by one second (Apache's
    ``mod_reqtimeout`` rule): a large upload on a slow but honest link completes, a client
    that sends a byte a second is answered 408 after ``read_timeout_s``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float, min_rate_bytes_s: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.min_rate_bytes_s = min_rate_bytes_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, "payload_too_large", self._too_large())
            return
        guard = _BodyGuard(self, receive, send)
        await self.app(scope, guard.receive, guard.send)

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"


class _BodyGuard:
    """One request's receive and send, as ``BodyLimits`` bounds them."""

    def __init__(self, limits: BodyLimits, receive: Receive, send: Send) -> None:
        self.limits = limits
        self._receive = receive
        self._send = send
        self.started = time.monotonic()
        self.seen = 0
        self.body_done = False
        self.response_started = False
        self.answered = False  # by the guard itself: the app's own answer is dropped

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()  # after the body: waiting for a disconnect has no deadline
        limits = self.limits
        deadline = self.started + limits.read_timeout_s + self.seen / limits.min_rate_bytes_s
        message: Message | None = None
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            message = await self._receive()
        if message is None:
            return await self._refuse(408, "request_timeout",
                                      f"the request body did not arrive within {limits.read_timeout_s:g} s")
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > limits.max_bytes:
                return await self._refuse(413, "payload_too_large", limits._too_large())
            self.body_done = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _refuse(self, status: int, code: str, message: str) -> Message:
        # Once the app has begun its own answer, there is nothing left to say: the client
        # is treated as gone, and uvicorn closes the connection when the app is done.
        if not self.response_started:
            await _answer(self._send, status, code, message)
        self.answered = True
        return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed one before the app sees it
    return None


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
