"""What ``Client`` and ``AsyncClient`` share, free of I/O: configuration, building
each call's ``httpx.Request``, the retry policy, parsing the answers, and the
wait loop's bookkeeping.

Every operation is built here as a ``Call``: a ready request plus the function that
turns its answer into a result. The two clients only send calls and sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from darkroom import __version__

from ._errors import (
    INVALID_RESPONSE,
    ConnectionError,  # noqa: A004 - the SDK's own
    DarkroomError,
    RequestFailed,
    WaitTimeout,
    error_from_response,
    parse_retry_after,
)
from ._models import RequestPage, RequestStatus, Status
from ._stream import DEADLINE_SLACK, EVENT_STREAM, STREAM_IDLE_TIMEOUT

API_PATH = "/api/v1/ie/requestqueue/apikey"
# The provider's own SDK uses the shorter path; a base_url already ending in either is kept.
_API_PATHS = (API_PATH, "/api/v1/ie/requestqueue")

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# A longer Retry-After is not slept through: the caller gets RateLimited and decides.
MAX_RETRY_AFTER = 60.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Failures in which the request never reached the server, so even a POST may be resent.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

T = TypeVar("T")

RequestRef = str | RequestStatus
"""A request given by its id or by any RequestStatus of it."""

OnUpdate = Callable[[RequestStatus], Any]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One operation: the request to send and how to read its answer."""

    request: httpx.Request
    parse: Callable[[httpx.Response], T]
    idempotent: bool = True  # safe to resend after any transport failure or a 429/502/503/504
    follow_redirects: bool = False


def api_root(base_url: str) -> str:
    """The request-queue API's root URL under ``base_url``."""
    url = base_url.rstrip("/")
    return url if url.endswith(_API_PATHS) else url + API_PATH


def request_id_of(request: RequestRef) -> str:
    """The id of a request given by id or by a RequestStatus."""
    if isinstance(request, RequestStatus):
        return request.request_id
    if isinstance(request, str) and request:
        return request
    raise TypeError(f"expected a request id or a RequestStatus, got {request!r}")


class BaseClient:
    """Configuration and I/O-free logic shared by Client and AsyncClient."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        if max_retries < 0 or retry_backoff < 0:
            raise ValueError("max_retries and retry_backoff must be >= 0")
        self.base_url = str(url).rstrip("/")
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._api_root = api_root(self.base_url)
        self._timeout = httpx.Timeout(timeout)
        user_agent = f"darkroom-python/{__version__} httpx/{httpx.__version__}"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        # Result URLs are signed: the API key is never sent along, wherever they point.
        self._download_headers = {"User-Agent": user_agent}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- building calls -------------------------------------------------------------

    def _build_submit(
        self, model: str, prompt: str | None, payload: Mapping[str, Any]
    ) -> Call[RequestStatus]:
        if not isinstance(model, str) or not model:
            raise TypeError(f"model must be a non-empty string, got {model!r}")
        body = {"prompt": prompt, **payload} if prompt is not None else dict(payload)
        request = self._request("POST", "/requests", json={"model": model, "payload": body})
        return Call(request, _parse_status, idempotent=False)

    def _build_get(self, request: RequestRef) -> Call[RequestStatus]:
        return Call(self._request("GET", f"/requests/{_segment(request_id_of(request))}"), _parse_status)

    def _build_list(
        self, model: str | None, status: Status | str | None, limit: int, offset: int
    ) -> Call[RequestPage]:
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if model is not None:
            params["model_id"] = model
        if status is not None:
            params["status"] = Status(status).value  # an unknown word fails here, not remotely

        def parse(response: httpx.Response) -> RequestPage:
            return RequestPage.from_json(_json(response), limit=limit, offset=offset)

        return Call(self._request("GET", "/requests", params=params), parse)

    def _build_cancel(self, request: RequestRef) -> Call[RequestStatus]:
        path = f"/requests/{_segment(request_id_of(request))}/cancel"
        # Not blindly resent: a second cancel of a request the first one reached may 409.
        return Call(self._request("POST", path), _parse_status, idempotent=False)

    def _build_models(self) -> Call[list[dict[str, Any]]]:
        return Call(self._request("GET", "/models"), _parse_models)

    def _build_model(self, model_id: str) -> Call[dict[str, Any]]:
        return Call(self._request("GET", f"/models/{_segment(model_id)}"), _parse_model)

    def _build_events(
        self, request: RequestRef, last_event_id: str | None, read_timeout: float
    ) -> Call[httpx.Response]:
        """The events stream's GET (docs/events.md), sent with ``stream=True``.

        Its read timeout replaces the client's: it must outlast the server's keep-alive
        interval, yet end by the wait's deadline (see ``Waiter.stream_read_timeout``).
        """
        headers = {**self._headers, "Accept": EVENT_STREAM, "Cache-Control": "no-cache"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        request = httpx.Request(
            "GET",
            f"{self._api_root}/requests/{_segment(request_id_of(request))}/events",
            headers=headers,
            extensions={"timeout": {**self._timeout.as_dict(), "read": read_timeout}},
        )
        return Call(request, _unparsed)

    def _build_download(self, target: RequestStatus | str, index: int) -> Call[bytes]:
        if isinstance(target, RequestStatus):
            if not target.succeeded:
                if target.done:
                    raise RequestFailed(target)
                raise ValueError(f"request {target.request_id} is {target.status.value}; wait() for it first")
            urls = target.urls
            if not -len(urls) <= index < len(urls):
                raise IndexError(f"request {target.request_id} has {len(urls)} result(s), no index {index}")
            url = urls[index]
        elif isinstance(target, str) and target:
            url = target
        else:
            raise TypeError(f"expected a RequestStatus or a URL, got {target!r}")
        absolute = httpx.URL(self.base_url).join(url)  # a relative URL resolves against the server
        request = httpx.Request(
            "GET", absolute, headers=self._download_headers, extensions=self._extensions()
        )
        return Call(request, _parse_bytes, follow_redirects=True)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
    ) -> httpx.Request:
        return httpx.Request(
            method,
            self._api_root + path,
            params=params,
            json=json,
            headers=self._headers,
            extensions=self._extensions(),
        )

    def _extensions(self) -> dict[str, Any]:
        # A hand-built httpx.Request carries its timeout itself; the transport reads it here.
        return {"timeout": self._timeout.as_dict()}

    # -- retries and translation ------------------------------------------------------

    def _retry_delay(
        self,
        call: Call[Any],
        attempt: int,
        *,
        response: httpx.Response | None = None,
        exc: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before resending ``call``, or ``None`` not to resend.

        ``attempt`` counts the retries already made. An idempotent call is resent after
        any transport failure and after a 429/502/503/504 answer; a POST only when the
        connection was never made, since the server may already have acted on it.
        """
        if attempt >= self.max_retries:
            return None
        backoff = self._backoff(attempt)
        if exc is not None:
            if not isinstance(exc, httpx.TransportError):
                return None
            if call.idempotent or isinstance(exc, _UNSENT):
                return backoff
            return None
        if response is None or not call.idempotent or response.status_code not in RETRY_STATUSES:
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            return backoff
        return retry_after if retry_after <= MAX_RETRY_AFTER else None

    def _backoff(self, attempt: int) -> float:
        return min(self.retry_backoff * 2.0**attempt, MAX_BACKOFF)

    def _stream_retry_delay(
        self,
        call: Call[Any],
        attempt: int,
        *,
        response: httpx.Response | None = None,
        exc: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before reopening the events stream, or ``None`` to poll instead.

        The stream only makes waiting faster, so only what ``_send`` would retry (a
        transport failure, a 429/502/503/504, and a stream that ended or broke before
        ``done``: both ``None``) is tried again, ``max_retries`` times; anything else
        (a 404 from a server without the route, a 500, a 2xx that is not an event
        stream, e.g. from a proxy) means polling at once.

        Raises:
            AuthenticationError: a 401, as every other call raises it.
        """
        if response is not None:
            if response.status_code == 401:
                raise error_from_response(response)
            if response.is_success:
                return None
            return self._retry_delay(call, attempt, response=response)
        if exc is not None:
            return self._retry_delay(call, attempt, exc=exc)
        return None if attempt >= self.max_retries else self._backoff(attempt)

    @staticmethod
    def _translate(call: Call[Any], exc: httpx.RequestError) -> DarkroomError:
        """The SDK error for an httpx failure; the caller raises it ``from exc``."""
        url = call.request.url.copy_with(query=None)  # keep signatures out of messages
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TransportError):
            return ConnectionError(f"{call.request.method} {url} failed: {detail}")
        return DarkroomError(f"{call.request.method} {url}: {detail}", code=INVALID_RESPONSE)


class Waiter:
    """The wait loop's bookkeeping: the deadline, change detection and the next sleep.

    Polls and stream events go through the same ``observe``, so ``on_update`` sees the
    same sequence whichever way the status arrived.
    """

    def __init__(self, request: RequestRef, timeout: float | None, poll_interval: float) -> None:
        if poll_interval < 0:
            raise ValueError("poll_interval must be >= 0")
        self.request_id = request_id_of(request)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.last: RequestStatus | None = None
        self.changes = 0  # observations that changed something; a stream that adds none is stuck
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._seen: tuple[object, ...] | None = None

    def observe(self, status: RequestStatus) -> bool:
        """Record one poll or event. True when what a progress display shows has changed."""
        key = (status.status, status.progress, status.queue_position)
        changed = key != self._seen
        self._seen, self.last = key, status
        self.changes += changed
        return changed

    def remaining(self) -> float | None:
        """Seconds left until the deadline (``None`` without one).

        Raises:
            WaitTimeout: the deadline has passed.
        """
        if self._deadline is None:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(self.request_id, self.timeout or 0.0, self.last)
        return remaining

    def next_delay(self) -> float:
        """Seconds to sleep before the next poll; the last one lands on the deadline.

        Raises:
            WaitTimeout: the deadline has passed.
        """
        remaining = self.remaining()
        return self.poll_interval if remaining is None else min(self.poll_interval, remaining)

    def retry_delay(self, delay: float) -> float:
        """``delay``, cut so that the sleep ends by the deadline (WaitTimeout when passed)."""
        remaining = self.remaining()
        return delay if remaining is None else min(delay, remaining)

    def stream_read_timeout(self) -> float:
        """The read timeout for a new events connection.

        Longer than the server's keep-alive interval, so that a quiet but healthy stream
        is not taken for a dead one, and no longer than the time left.

        Raises:
            WaitTimeout: the deadline has passed.
        """
        remaining = self.remaining()
        return STREAM_IDLE_TIMEOUT if remaining is None else min(STREAM_IDLE_TIMEOUT, remaining)

    def stream_overruns(self, read_timeout: float) -> bool:
        """True when a read with ``read_timeout`` starting now could end well after the deadline.

        A connection's read timeout is fixed when it opens; the caller reopens the
        stream with a fresh one, so that WaitTimeout comes at the deadline, not at the
        server's next keep-alive.
        """
        if self._deadline is None:
            return False
        return time.monotonic() + read_timeout > self._deadline + DEADLINE_SLACK


def check_outcome(status: RequestStatus) -> RequestStatus:
    """Return a succeeded status; raise RequestFailed for a failed or cancelled one."""
    if not status.succeeded:
        raise RequestFailed(status)
    return status


# -- parsing answers ----------------------------------------------------------------------


def _segment(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return quote(value, safe="")


def _json(response: httpx.Response) -> Any:
    if not response.is_success:
        raise error_from_response(response)
    try:
        return response.json()
    except ValueError as exc:
        raise DarkroomError(
            "the server's answer is not JSON",
            status_code=response.status_code,
            code=INVALID_RESPONSE,
            response=response,
        ) from exc


def _unparsed(response: httpx.Response) -> httpx.Response:
    return response


def _parse_status(response: httpx.Response) -> RequestStatus:
    return RequestStatus.from_json(_json(response))


def _parse_models(response: httpx.Response) -> list[dict[str, Any]]:
    body = _json(response)
    if isinstance(body, dict) and isinstance(body.get("models"), list):
        return [m for m in body["models"] if isinstance(m, dict)]
    if isinstance(body, dict) and isinstance(body.get("model_ids"), list):
        return [{"model": model_id} for model_id in body["model_ids"]]
    raise DarkroomError("expected {'model_ids': [...], 'models': [...]}", code=INVALID_RESPONSE)


def _parse_model(response: httpx.Response) -> dict[str, Any]:
    body = _json(response)
    if not isinstance(body, dict):
        raise DarkroomError("expected a model record", code=INVALID_RESPONSE)
    return body


def _parse_bytes(response: httpx.Response) -> bytes:
    if not response.is_success:
        raise error_from_response(response)
    return response.content
