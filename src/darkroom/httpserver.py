"""How ``darkroom serve`` runs uvicorn: its configuration from the settings, and the limits on
slow or oversized request headers that uvicorn does not enforce itself.

uvicorn reads headers with no deadline (its keep-alive timer only runs between requests, and
any byte cancels it) and, with httptools, with no size limit: a client sending a byte a
second held a connection for ever. The body's limits are the ASGI middleware's
(``api/limits.py``); the headers' must live in the protocol, since the application is not
called before they are complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from darkroom.api.errors import error_body
from darkroom.settings import Settings


def build_server(app: Any, settings: Settings, *, host: str, port: int,
                 on_exit: Callable[[], None] | None = None) -> Any:
    """A uvicorn server for ``app`` with darkroom's limits; ``on_exit`` (stopping the worker
    child) runs before the process exits, whatever stops it.

    uvicorn re-raises a captured SIGTERM/SIGINT once it has shut down, with the default
    handler, which ends the process before any ``finally`` of the caller's runs: the worker
    child was orphaned. ``on_exit`` runs inside uvicorn's signal capture instead.
    """
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level=settings.log_level.lower(),
        http=header_limited_protocol(settings.header_read_timeout_s, settings.max_header_bytes),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
        # open event streams must not hold a shutdown (or a restart) hostage
        timeout_graceful_shutdown=5,
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    if on_exit is not None:
                        on_exit()

    return Server(config)


def header_limited_protocol(timeout_s: float, max_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11), closing a connection whose next request's
    headers take longer than ``timeout_s`` (408) or exceed ``max_bytes`` (431).

    The clock starts when the connection opens and again whenever a response completes, the
    two moments the connection starts waiting for headers; an idle keep-alive connection is
    closed without an answer.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderLimitedProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_headers() and not self.transport.is_closing():
                self._header_bytes += len(data)
                if self._header_bytes > max_bytes:
                    self._refuse(431, "headers_too_large", f"request headers are larger than {max_bytes} bytes")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            # Both of uvicorn's protocols make a new cycle when a request's headers are complete.
            return self.cycle is None or self.cycle.response_complete

        def _await_headers(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(timeout_s, self._header_timeout)

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or not self._awaiting_headers():
                return  # a request is in progress: its completion starts the clock again
            if self._header_bytes:
                self._refuse(408, "request_timeout", f"the request headers did not arrive within {timeout_s:g} s")
            else:
                self.transport.close()

        def _refuse(self, status: int, code: str, message: str) -> None:
            body = json.dumps(error_body(code, message)).encode()
            reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()

    return HeaderLimitedProtocol
