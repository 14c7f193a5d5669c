"""Fixtures for the SDK's logic tests: an httpx.MockTransport stands in for the server.

Most tests take ``make_client`` and so run twice, once against ``Client`` and once
against ``AsyncClient`` (driven through a blocking facade), which is how the
twins are held to the same behaviour.

``deployment`` is the other kind: a real ``darkroom serve`` on loopback with a worker
and the tiny models, for the tests that follow a request's events stream end to end.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from darkroom.client import AsyncClient, Client

BASE_URL = "http://darkroom.test"
API_ROOT = BASE_URL + "/api/v1/ie/requestqueue/apikey"
API_KEY = "dr_test_key"
_API_PREFIX = re.compile(r"^.*?/api/v1/ie/requestqueue(/apikey)?(?=/)")
REQUEST_ID = "0b9a6a3e-1d7c-4c37-9a8f-3f3c2f0e5a11"

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Server:
    """A scripted MockTransport handler: routes by (method, path), records every request.

    Each route answers from its list in order, repeating the last answer; an
    answer may be a response, an exception to raise, or a function of the request.
    """

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._routes: dict[tuple[str, str], list[Answer]] = {}

    def on(self, method: str, path: str, *answers: Answer) -> Server:
        self._routes[(method, path)] = list(answers)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raw_path = request.url.raw_path.decode().partition("?")[0]  # ids stay quoted
        path = _API_PREFIX.sub("", raw_path)
        answers = self._routes.get((request.method, path))
        if not answers:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        # A fresh copy each time: a response object is not meant to be sent twice.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path.endswith(path))


def status_json(status: str = "queued", **fields: Any) -> dict[str, Any]:
    """A full status object as the contract describes it."""
    body: dict[str, Any] = {
        "request_id": REQUEST_ID,
        "org_id": "org_1",
        "model": "darkroom-mini",
        "status": status,
        "is_public": False,
        "payload": {"prompt": "a fox"},
        "outcome": None,
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_001,
        "queued_at": 1_700_000_000,
        "progress": None,
        "queue_position": None,
    }
    if status == "success":
        body["outcome"] = {
            "media_urls": [
                {"id": "0", "url": BASE_URL + "/files/a.png?sig=abc"},
                {"id": "1", "url": BASE_URL + "/files/b.png?sig=def"},
            ],
            "seed": 42,
            "width": 1024,
            "height": 1024,
            "output_format": "png",
            "prompt": "a fox",
            "timings": {"inference": 1.5},
        }
    elif status in ("failed", "cancelled"):
        code = "engine_error" if status == "failed" else "cancelled"
        body["outcome"] = {"error": {"code": code, "message": "it broke"}}
    body.update(fields)
    return body


def ok(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status_code, json=body, headers=headers)


def error(status_code: int, code: str, message: str = "nope", **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    return httpx.Response(
        status_code, json={"error": {"code": code, "message": message, **extra}}, headers=headers
    )


def sse(*events: tuple[str, Any], retry: int | None = 2000, first_id: int = 1) -> bytes:
    """An event stream's bytes as the server writes them: ``(name, data)`` pairs, ids from ``first_id``."""
    parts = [f"retry: {retry}\n\n"] if retry is not None else []
    for number, (name, data) in enumerate(events, start=first_id):
        parts.append(f"id: {number}\nevent: {name}\ndata: {json.dumps(data)}\n\n")
    return "".join(parts).encode()


SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8"}


def sse_response(*events: tuple[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.Response(200, headers=SSE_HEADERS, content=sse(*events, **kwargs))


class CutStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that yields ``chunks`` and then fails like a dropped connection."""

    def __init__(self, *chunks: bytes, error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error or httpx.ReadError("connection reset (test)")
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise self.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise self.error

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def cut_response(*chunks: bytes, error: Exception | None = None) -> Callable[[httpx.Request], httpx.Response]:
    """An answer (a function, so each request gets a fresh body) that breaks after ``chunks``."""
    return lambda request: httpx.Response(200, headers=SSE_HEADERS, stream=CutStream(*chunks, error=error))


class Blocking:
    """Drives an AsyncClient from synchronous test code, one event loop for its life."""

    def __init__(self, client: AsyncClient, runner: asyncio.Runner) -> None:
        self.wrapped = client
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.wrapped, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self._runner.run(attr(*args, **kwargs))
        return attr

    def close(self) -> None:
        self._runner.run(self.wrapped.aclose())


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``make_client(handler, **kwargs)``: a Client, or an AsyncClient behind ``Blocking``.

    Retries sleep 0 s unless ``retry_backoff`` is given.
    """
    runner = asyncio.Runner()
    made: list[Any] = []

    def factory(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Any:
        kwargs.setdefault("retry_backoff", 0.0)
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("api_key", API_KEY)
        transport = httpx.MockTransport(handler)
        if request.param == "sync":
            client: Any = Client(transport=transport, **kwargs)
        else:
            client = Blocking(AsyncClient(transport=transport, **kwargs), runner)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()
    runner.close()


# Plain helpers handed to tests as a fixture, so no test imports conftest.
@pytest.fixture
def fx() -> SimpleNamespace:
    return SimpleNamespace(
        status_json=status_json,
        ok=ok,
        error=error,
        BASE_URL=BASE_URL,
        API_ROOT=API_ROOT,
        API_KEY=API_KEY,
        REQUEST_ID=REQUEST_ID,
        sse=sse,
        sse_response=sse_response,
        cut_response=cut_response,
        CutStream=CutStream,
        SSE_HEADERS=SSE_HEADERS,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Any]:
    """A real server with a worker and two keys (``.a``, ``.b``), shared by a module's tests."""
    from darkroom.testing.api import start_deployment

    dep = start_deployment(tmp_path_factory.mktemp("client-deploy"), tiny_models)
    yield dep
    dep.server.stop()
