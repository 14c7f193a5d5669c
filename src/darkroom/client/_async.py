"""The asyncio client: ``Client``'s twin, method for method, over the same base."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
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


class AsyncClient(BaseClient):
    """An asyncio client for a darkroom server's request-queue API.

    Same arguments, methods, results and errors as :class:`Client`, with ``async``
    methods, an ``httpx.AsyncBaseTransport`` for ``transport``, ``async with`` and
    ``aclose()``. ``on_update`` may be a plain function or a coroutine function.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url, api_key, timeout=timeout, max_retries=max_retries, retry_backoff=retry_backoff
        )
        self._http = httpx.AsyncClient(transport=transport, timeout=self._timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def submit(self, model: str, prompt: str | None = None, **payload: Any) -> RequestStatus:
        """Queue a generation request and return at once. See :meth:`Client.submit`."""
        return await self._send(self._build_submit(model, prompt, payload))

    async def get(self, request: RequestRef) -> RequestStatus:
        """The request's current status. See :meth:`Client.get`."""
        return await self._send(self._build_get(request))

    async def list(
        self,
        model: str | None = None,
        status: Status | str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> RequestPage:
        """One page of this key's requests. See :meth:`Client.list`."""
        return await self._send(self._build_list(model, status, limit, offset))

    async def wait(
        self,
        request: RequestRef,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 0.5,
        on_update: OnUpdate | None = None,
        stream: bool = True,
    ) -> RequestStatus:
        """Wait until the request has finished, following its events stream. See :meth:`Client.wait`.

        Raises:
            WaitTimeout: still not finished after ``timeout`` seconds; the request goes on.
        """
        waiter = Waiter(request, timeout, poll_interval)
        status = await self._observe(waiter, await self.get(waiter.request_id), on_update)
        if status.done:
            return status
        if stream:
            final = await self._follow(waiter, status, on_update)
            if final is not None:
                return final
        while True:
            await asyncio.sleep(waiter.next_delay())
            status = await self._observe(waiter, await self.get(waiter.request_id), on_update)
            if status.done:
                return status

    async def generate(
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
        """Submit and wait; raise RequestFailed unless it succeeds. See :meth:`Client.generate`."""
        submitted = await self.submit(model, prompt, **payload)
        final = await self.wait(
            submitted, timeout=timeout, poll_interval=poll_interval, on_update=on_update, stream=stream
        )
        return check_outcome(final)

    async def download(self, target: RequestStatus | str, index: int = 0) -> bytes:
        """The bytes of a result image. See :meth:`Client.download`."""
        return await self._send(self._build_download(target, index))

    async def cancel(self, request: RequestRef) -> RequestStatus:
        """Ask the server to cancel the request. See :meth:`Client.cancel`."""
        return await self._send(self._build_cancel(request))

    async def models(self) -> builtins.list[dict[str, Any]]:
        """The model records the server offers. See :meth:`Client.models`."""
        return await self._send(self._build_models())

    async def model(self, model_id: str) -> dict[str, Any]:
        """One model's record. See :meth:`Client.model`."""
        return await self._send(self._build_model(model_id))

    @staticmethod
    async def _observe(waiter: Waiter, status: RequestStatus, on_update: OnUpdate | None) -> RequestStatus:
        if waiter.observe(status) and on_update is not None:
            result = on_update(status)
            if inspect.isawaitable(result):
                await result
        return status

    async def _follow(
        self, waiter: Waiter, last: RequestStatus, on_update: OnUpdate | None
    ) -> RequestStatus | None:
        """Follow the events stream to the final status; ``None`` to poll instead. See ``Client._follow``."""
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
                response = await self._http.send(call.request, stream=True)
                if is_event_stream(response):
                    ending = await self._read_events(response, events, waiter, on_update, read_timeout)
                    if isinstance(ending, RequestStatus):
                        return ending
                    if ending is REOPEN:
                        continue
                else:
                    await response.aread()
                    refusal = response
            except httpx.RequestError as exc:
                waiter.remaining()  # a read that timed out at the deadline is a WaitTimeout
                failure = exc
            finally:
                if response is not None:
                    await response.aclose()
            if waiter.changes > changes:  # it was working: reopen at once, with a fresh count
                attempt = 0
                continue
            delay = self._stream_retry_delay(call, attempt, response=refusal, exc=failure)
            if delay is None:
                log.debug("request %s: polling instead of the events stream (%s)",
                          waiter.request_id, stream_failure(refusal, failure))
                return None
            attempt += 1
            await asyncio.sleep(waiter.retry_delay(delay))

    async def _read_events(
        self,
        response: httpx.Response,
        events: StatusStream,
        waiter: Waiter,
        on_update: OnUpdate | None,
        read_timeout: float,
    ) -> RequestStatus | Ending:
        """Read one connection: the final status, or why it stopped before that."""
        events.reconnect()
        async for chunk in response.aiter_text():
            for update in events.feed(chunk):
                status = update.status or await self.get(waiter.request_id)
                await self._observe(waiter, status, on_update)
                if update.done and status.done:
                    return status
            if waiter.stream_overruns(read_timeout):
                return REOPEN
        return ENDED

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(call.request, follow_redirects=call.follow_redirects)
            except httpx.RequestError as exc:
                delay = self._retry_delay(call, attempt, exc=exc)
                if delay is None:
                    raise self._translate(call, exc) from exc
            else:
                delay = self._retry_delay(call, attempt, response=response)
                if delay is None:
                    return call.parse(response)
            attempt += 1
            await asyncio.sleep(delay)
