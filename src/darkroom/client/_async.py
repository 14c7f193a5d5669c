"""The asyncio client: ``Client``'s twin, method for method, over the same base."""

from __future__ import annotations

import asyncio
import builtins
import inspect
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

T = TypeVar("T")


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
    ) -> RequestStatus:
        """Poll until the request has finished. See :meth:`Client.wait`.

        Raises:
            WaitTimeout: still not finished after ``timeout`` seconds; the request goes on.
        """
        waiter = Waiter(request, timeout, poll_interval)
        while True:
            status = await self.get(waiter.request_id)
            if waiter.observe(status) and on_update is not None:
                result = on_update(status)
                if inspect.isawaitable(result):
                    await result
            if status.done:
                return status
            await asyncio.sleep(waiter.next_delay())

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 0.5,
        on_update: OnUpdate | None = None,
        **payload: Any,
    ) -> RequestStatus:
        """Submit and wait; raise RequestFailed unless it succeeds. See :meth:`Client.generate`."""
        submitted = await self.submit(model, prompt, **payload)
        final = await self.wait(submitted, timeout=timeout, poll_interval=poll_interval, on_update=on_update)
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
