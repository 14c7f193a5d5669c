"""The blocking client."""

from __future__ import annotations

import builtins
import logging
import time
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_TIMEOUT,
    BaseClient,
    Call,
    OnUpdate,
    RequestRef,
    Waiter,
    check_outcome,
)
from ._models import RequestPage, RequestStatus, Status
from ._stream import ENDED, REOPEN, Ending, StatusStream, is_event_stream, stream_failure

T = TypeVar("T")
log = logging.getLogger("darkroom.client")


class Client(BaseClient):
    """A blocking client for a darkroom server's request-queue API.

    Args:
        base_url: the server's root, e.g. ``"http://127.0.0.1:8000"`` (a URL that
            already ends in the API path is used as is).
        api_key: the key sent as ``Authorization: Bearer <api_key>``.
        timeout: seconds per HTTP call (or an ``httpx.Timeout``); ``None`` for none.
        max_retries: how often an idempotent call is resent after a connection
            failure or a 429/502/503/504 answer. A POST is resent only when the
            connection was never made.
        retry_backoff: the first retry's delay in seconds, doubled for each next one
            (a ``Retry-After`` header takes precedence).
        transport: an ``httpx.BaseTransport`` to send through instead of the network
            (``httpx.MockTransport`` in tests).

    Use it as a context manager, or call ``close()``, to release its connections.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout=timeout, max_retries=max_retries, retry_backoff=retry_backoff
        )
        self._http = httpx.Client(transport=transport, timeout=self._timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(self, model: str, prompt: str | None = None, **payload: Any) -> RequestStatus:
        """Queue a generation request and return at once.

        Args:
            model: the model id, e.g. ``"darkroom-mini"``.
            prompt: the payload's ``prompt``.
            **payload: the other payload fields, sent as given (``aspect_ratio``,
                ``seed``, ``output_format``, ``input_image``, ...); ``None`` is sent
                as JSON ``null``. The server validates them.

        Returns:
            The new request, status ``queued`` (only the submit answer's fields are set).

        Raises:
            InvalidRequest: a payload field is unknown, of the wrong type or out of range.
            NotFoundError: no such model.
            DarkroomError: any other error of the tree.
        """
        return self._send(self._build_submit(model, prompt, payload))

    def get(self, request: RequestRef) -> RequestStatus:
        """The request's current status.

        Raises:
            NotFoundError: no such request for this key (``code`` ``request_not_found``).
        """
        return self._send(self._build_get(request))

    def list(
        self,
        model: str | None = None,
        status: Status | str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RequestPage:
        """One page of this key's requests, optionally only one model's or one status's.

        Raises:
            ValueError: ``status`` is not a status word.
        """
        return self._send(self._build_list(model, status, limit, offset))

    def wait(
        self,
        request: RequestRef,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 0.5,
        on_update: OnUpdate | None = None,
        stream: bool = True,
    ) -> RequestStatus:
        """Wait until the request is ``success``, ``failed`` or ``cancelled``.

        One GET reads the current status; then the server's events stream (docs/events.md)
        reports each change as it happens, so the end is seen at once rather than at the
        next poll. If the stream cannot be opened (an older server, a proxy that does not
        pass it) or breaks, it is reopened up to ``max_retries`` times, then the rest of
        the wait polls.

        Args:
            timeout: seconds to wait in all; ``None`` waits for ever.
            poll_interval: seconds between polls, when polling.
            on_update: called with the status after the first GET and whenever the
                status word, the progress or the queue position changed.
            stream: ``False`` polls from the start.

        Returns:
            The final status, whatever it is (``generate`` is the variant that raises).

        Raises:
            WaitTimeout: still not finished after ``timeout`` seconds; the request goes on.
        """
        waiter = Waiter(request, timeout, poll_interval)
        status = self._observe(waiter, self.get(waiter.request_id), on_update)
        if status.done:
            return status
        if stream:
            final = self._follow(waiter, status, on_update)
            if final is not None:
                return final
        while True:
            time.sleep(waiter.next_delay())
            status = self._observe(waiter, self.get(waiter.request_id), on_update)
            if status.done:
                return status

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 0.5,
        on_update: OnUpdate | None = None,
        stream: bool = True,
        **payload: Any,
    ) -> RequestStatus:
        """Submit a request and wait for its result (``submit`` then ``wait``).

        ``timeout``, ``poll_interval``, ``on_update`` and ``stream`` are ``wait``'s; every
        other keyword is a payload field.

        Returns:
            The final status, which has succeeded; its images are ``.urls``.

        Raises:
            RequestFailed: the request ended ``failed`` or ``cancelled``; ``code`` is the
                outcome's (``input_moderated``, ``engine_error``, ``cancelled``, ...).
            WaitTimeout: not finished in time.
        """
        submitted = self.submit(model, prompt, **payload)
        final = self.wait(
            submitted, timeout=timeout, poll_interval=poll_interval, on_update=on_update, stream=stream
        )
        return check_outcome(final)

    def download(self, target: RequestStatus | str, index: int = 0) -> bytes:
        """The bytes of a result image: the ``index``-th of a succeeded status, or a URL.

        The URL is signed, so the API key is not sent with it.

        Raises:
            RequestFailed: ``target`` is a failed or cancelled request.
            ValueError: ``target`` has not finished yet.
            IndexError: ``target`` has no image at ``index``.
            PermissionDenied: the signed URL is invalid or has expired.
        """
        return self._send(self._build_download(target, index))

    def cancel(self, request: RequestRef) -> RequestStatus:
        """Ask the server to cancel the request; returns its status after the call.

        Raises:
            ConflictError: the request has already finished (``code`` ``invalid_state``).
            NotFoundError: no such request for this key.
        """
        return self._send(self._build_cancel(request))

    def models(self) -> builtins.list[dict[str, Any]]:
        """The model records the server offers (``{"model": id, ...}`` each)."""
        return self._send(self._build_models())

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's record: description, type, parameters and their ranges, ...

        Raises:
            NotFoundError: no such model (``code`` ``model_not_found``).
        """
        return self._send(self._build_model(model_id))

    @staticmethod
    def _observe(waiter: Waiter, status: RequestStatus, on_update: OnUpdate | None) -> RequestStatus:
        if waiter.observe(status) and on_update is not None:
            on_update(status)
        return status

    def _follow(
        self, waiter: Waiter, last: RequestStatus, on_update: OnUpdate | None
    ) -> RequestStatus | None:
        """Follow the events stream to the final status; ``None`` to poll instead."""
        events = StatusStream(last)
        attempt = 0
        while True:
            read_timeout = waiter.stream_read_timeout()
            call = self._build_events(waiter.request_id, events.last_event_id, read_timeout)
            changes = waiter.changes
            response: httpx.Response | None = None
            refusal: httpx.Response | None = None  # an answer that is not an event stream
            failure: Exception | None = None
            try:
                response = self._http.send(call.request, stream=True)
                if is_event_stream(response):
                    ending = self._read_events(response, events, waiter, on_update, read_timeout)
                    if isinstance(ending, RequestStatus):
                        return ending
                    if ending is REOPEN:
                        continue
                else:
                    response.read()
                    refusal = response
            except httpx.RequestError as exc:
                waiter.remaining()  # a read that timed out at the deadline is a WaitTimeout
                failure = exc
            finally:
                if response is not None:
                    response.close()
            if waiter.changes > changes:  # it was working: reopen at once, with a fresh count
                attempt = 0
                continue
            delay = self._stream_retry_delay(call, attempt, response=refusal, exc=failure)
            if delay is None:
                log.debug("request %s: polling instead of the events stream (%s)",
                          waiter.request_id, stream_failure(refusal, failure))
                return None
            attempt += 1
            time.sleep(waiter.retry_delay(delay))

    def _read_events(
        self,
        response: httpx.Response,
        events: StatusStream,
        waiter: Waiter,
        on_update: OnUpdate | None,
        read_timeout: float,
    ) -> RequestStatus | Ending:
        """Read one connection: the final status, or why it stopped before that."""
        events.reconnect()
        for chunk in response.iter_text():
            for update in events.feed(chunk):
                status = update.status or self.get(waiter.request_id)
                self._observe(waiter, status, on_update)
                if update.done and status.done:
                    return status
            if waiter.stream_overruns(read_timeout):
                return REOPEN
        return ENDED

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(call.request, follow_redirects=call.follow_redirects)
            except httpx.RequestError as exc:
                delay = self._retry_delay(call, attempt, exc=exc)
                if delay is None:
                    raise self._translate(call, exc) from exc
            else:
                delay = self._retry_delay(call, attempt, response=response)
                if delay is None:
                    return call.parse(response)
            attempt += 1
            time.sleep(delay)
