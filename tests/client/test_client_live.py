"""wait() and generate() against a real server: the events stream end to end.

The clients send through the real transport wrapped in a ``Tap``, which records every
request and, where a test asks, spoils the events route: a 404 as from a server without
it, or a connection cut after the first event. Counting the status GETs is how a test
tells a streamed wait (one GET, to start) from a polled one (a GET per poll); the long
poll interval only makes the difference stark. No test asserts tight timings.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from darkroom.client import AsyncClient, Client, RequestStatus, Status, WaitTimeout

# A run of a few seconds here, so the stream reports several steps (it looks twice a second).
SLOW_STEPS = 500
NEVER = 600.0  # a poll interval no test waits out: a wait that returns did not poll


class Spoil:
    """What a Tap does to the events route."""

    PASS = "pass"
    NOT_FOUND = "404"  # answer for the server, as one from before the route existed
    CUT_FIRST = "cut-first"  # cut the first connection after its first event
    CUT_ALL = "cut-all"  # cut every connection before any event


class Tap:
    """Records requests; spoils the events route as ``spoil`` says. Shared by both wrappers."""

    def __init__(self, spoil: str = Spoil.PASS) -> None:
        self.spoil = spoil
        self.requests: list[httpx.Request] = []

    def status_gets(self) -> int:
        return sum(1 for r in self.requests if r.method == "GET" and "/requests/" in r.url.path
                   and not r.url.path.endswith("/events"))

    def events(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/events")]

    def before(self, request: httpx.Request) -> httpx.Response | None:
        """Record ``request``; an answer to give instead of the server's, if any."""
        self.requests.append(request)
        if request.url.path.endswith("/events") and self.spoil == Spoil.NOT_FOUND:
            return httpx.Response(404, json={"detail": "Not Found"})
        return None

    def cut_after(self, request: httpx.Request) -> int | None:
        """How many events of this answer get through before the cut, or None for all."""
        if not request.url.path.endswith("/events"):
            return None
        if self.spoil == Spoil.CUT_ALL:
            return 0
        if self.spoil == Spoil.CUT_FIRST and len(self.events()) == 1:
            return 1
        return None


def _cut(chunks: list[bytes], events: int) -> tuple[bytes, bool]:
    """The bytes up to the end of the ``events``-th event (after a ``retry`` block), and if reached."""
    text = b"".join(chunks)
    end, seen = 0, 0
    while seen < events:
        block = text.find(b"\n\n", end)
        if block < 0:
            return text, False
        if b"event:" in text[end:block]:
            seen += 1
        end = block + 2
    return text[:end], True


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, events: int) -> None:
        self.inner, self.events = inner, events

    def __iter__(self) -> Iterator[bytes]:
        chunks: list[bytes] = []
        if self.events == 0:
            raise httpx.ReadError("connection cut by the test")
        for chunk in self.inner:
            chunks.append(chunk)
            head, reached = _cut(chunks, self.events)
            if reached:
                yield head
                raise httpx.ReadError("connection cut by the test")
        yield b"".join(chunks)

    def close(self) -> None:
        self.inner.close()


class _AsyncCutStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, events: int) -> None:
        self.inner, self.events = inner, events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks: list[bytes] = []
        if self.events == 0:
            raise httpx.ReadError("connection cut by the test")
        async for chunk in self.inner:
            chunks.append(chunk)
            head, reached = _cut(chunks, self.events)
            if reached:
                yield head
                raise httpx.ReadError("connection cut by the test")
        yield b"".join(chunks)

    async def aclose(self) -> None:
        await self.inner.aclose()


class TapTransport(httpx.BaseTransport):
    def __init__(self, tap: Tap) -> None:
        self.tap, self.inner = tap, httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.tap.before(request)
        if answer is not None:
            return answer
        response = self.inner.handle_request(request)
        events = self.tap.cut_after(request)
        if events is None:
            return response
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_CutStream(response.stream, events), extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


class AsyncTapTransport(httpx.AsyncBaseTransport):
    def __init__(self, tap: Tap) -> None:
        self.tap, self.inner = tap, httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.tap.before(request)
        if answer is not None:
            return answer
        response = await self.inner.handle_async_request(request)
        events = self.tap.cut_after(request)
        if events is None:
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_AsyncCutStream(response.stream, events), extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture()
def tapped(deployment) -> Iterator[Callable[..., tuple[Client, Tap]]]:
    """``tapped(spoil, **client_kwargs)``: a Client for key ``a`` through a new Tap."""
    made: list[Client] = []

    def factory(spoil: str = Spoil.PASS, **kwargs: Any) -> tuple[Client, Tap]:
        tap = Tap(spoil)
        client = Client(deployment.server.url, deployment.a.key, transport=TapTransport(tap), **kwargs)
        made.append(client)
        return client, tap

    yield factory
    for client in made:
        client.close()


def run_async(deployment, spoil: str, body: Callable[[AsyncClient], Any], **kwargs: Any) -> tuple[Any, Tap]:
    tap = Tap(spoil)

    async def main() -> Any:
        async with AsyncClient(deployment.server.url, deployment.b.key, transport=AsyncTapTransport(tap),
                               **kwargs) as client:
            return await body(client)

    return asyncio.run(main()), tap


def occupy_the_worker(deployment) -> str:
    """A long request that is running, so the next one waits in the queue. Cancel it after."""
    blocker = deployment.a.submit("tiny-slow", steps=2000, seed=1)["request_id"]
    deployment.a.wait(blocker, until=("processing",), timeout=120)
    return blocker


def test_wait_returns_via_the_stream_with_one_get(deployment, tapped) -> None:
    client, tap = tapped()
    submitted = client.submit("tiny", "a blue square", seed=1)
    started = time.monotonic()

    final = client.wait(submitted, poll_interval=NEVER)

    assert final.succeeded and final.urls and final.outcome["seed"] == 1
    assert tap.status_gets() == 1  # the one that starts the wait: no polls
    assert len(tap.events()) == 1
    assert time.monotonic() - started < NEVER / 2  # generous: only that it did not wait out a poll
    image = Image.open(io.BytesIO(client.download(final)))
    assert image.size == (1024, 1024)


def test_on_update_sees_queued_processing_steps_and_success(deployment, tapped) -> None:
    blocker = occupy_the_worker(deployment)
    client, tap = tapped()
    submitted = client.submit("tiny-slow", "a green ring", steps=SLOW_STEPS, seed=2)
    seen: list[RequestStatus] = []

    def on_update(status: RequestStatus) -> None:
        if not seen:  # it is queued behind the blocker: let it through
            assert deployment.a.post(f"/requests/{blocker}/cancel").status_code == 200
        seen.append(status)

    final = client.wait(submitted, poll_interval=NEVER, on_update=on_update)

    assert final.succeeded and seen[-1] is final
    words = [s.status for s in seen]
    assert words[0] is Status.QUEUED and seen[0].queue_position == 0
    assert [w for i, w in enumerate(words) if i == 0 or words[i - 1] != w] == \
        [Status.QUEUED, Status.PROCESSING, Status.SUCCESS]
    steps = [s.progress.step for s in seen if s.status is Status.PROCESSING and s.progress]
    assert len(steps) >= 2 and steps == sorted(set(steps)), steps
    assert all(s.progress.total == SLOW_STEPS for s in seen if s.progress)
    assert final.progress is not None and final.progress.step == SLOW_STEPS
    assert all(s.model == "tiny-slow" and s.payload["seed"] == 2 for s in seen)  # merged into the GET's
    assert tap.status_gets() == 1


def test_an_old_server_without_the_route_is_polled(deployment, tapped) -> None:
    client, tap = tapped(Spoil.NOT_FOUND)
    submitted = client.submit("tiny", "a red dot", seed=3)
    seen: list[Status] = []

    final = client.wait(submitted, poll_interval=0.2, on_update=lambda s: seen.append(s.status))

    assert final.succeeded and seen[-1] is Status.SUCCESS
    assert len(tap.events()) == 1  # asked once, then polled
    assert tap.status_gets() >= 2


def test_a_stream_cut_mid_way_reconnects_with_last_event_id(deployment, tapped) -> None:
    client, tap = tapped(Spoil.CUT_FIRST, retry_backoff=0.05)
    submitted = client.submit("tiny-slow", "a grey cube", steps=SLOW_STEPS // 3, seed=4)

    final = client.wait(submitted, poll_interval=NEVER)

    assert final.succeeded
    first, second, *_ = tap.events()
    assert "last-event-id" not in first.headers
    assert second.headers["last-event-id"] == "1"  # the server's ids go on after it
    assert tap.status_gets() == 1


def test_a_stream_that_always_breaks_falls_back_to_polling(deployment, tapped) -> None:
    client, tap = tapped(Spoil.CUT_ALL, max_retries=2, retry_backoff=0.05)
    submitted = client.submit("tiny", "a black line", seed=5)

    final = client.wait(submitted, poll_interval=0.2)

    assert final.succeeded
    assert len(tap.events()) == 3  # the first try and max_retries reconnects
    assert tap.status_gets() >= 2


def test_wait_timeout_comes_at_the_deadline_on_a_quiet_stream(deployment, tapped) -> None:
    blocker = occupy_the_worker(deployment)
    client, tap = tapped()
    queued = client.submit("tiny", "a white wall", seed=6)
    try:
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as info:
            client.wait(queued, timeout=2, poll_interval=NEVER)
        # Nothing changes while it waits, so only the read timeout can end it: it must be
        # the deadline, not the server's 15 s keep-alive nor the poll interval.
        assert time.monotonic() - started < 12
        assert info.value.last.status is Status.QUEUED
        assert tap.status_gets() == 1
    finally:
        client.cancel(queued)
        deployment.a.post(f"/requests/{blocker}/cancel")
    assert client.wait(queued, timeout=60).status is Status.CANCELLED  # finished: one GET, no stream


def test_async_generate_follows_the_stream(deployment) -> None:
    updates: list[Status] = []

    async def body(client: AsyncClient) -> tuple[RequestStatus, bytes]:
        async def on_update(status: RequestStatus) -> None:
            await asyncio.sleep(0)
            updates.append(status.status)

        done = await client.generate("tiny", "a purple ring", seed=9, poll_interval=NEVER, on_update=on_update)
        return done, await client.download(done)

    (final, image), tap = run_async(deployment, Spoil.PASS, body)

    assert final.succeeded and updates[-1] is Status.SUCCESS
    assert tap.status_gets() == 1 and len(tap.events()) == 1
    assert Image.open(io.BytesIO(image)).format == "JPEG"


def test_async_wait_falls_back_and_reconnects(deployment) -> None:
    async def body(client: AsyncClient) -> RequestStatus:
        submitted = await client.submit("tiny", "an orange", seed=10)
        return await client.wait(submitted, poll_interval=0.2)

    final, tap = run_async(deployment, Spoil.NOT_FOUND, body)
    assert final.succeeded and len(tap.events()) == 1 and tap.status_gets() >= 2

    async def slow(client: AsyncClient) -> RequestStatus:
        submitted = await client.submit("tiny-slow", "a lemon", steps=SLOW_STEPS // 3, seed=11)
        return await client.wait(submitted, poll_interval=NEVER)

    final, tap = run_async(deployment, Spoil.CUT_FIRST, slow, retry_backoff=0.05)
    assert final.succeeded and tap.status_gets() == 1
    assert tap.events()[1].headers["last-event-id"] == "1"


def test_generate_remote_moves_the_bar_to_full(deployment, monkeypatch) -> None:
    from darkroom import generate

    calls: list[tuple[str, int | None, int | None, int | None]] = []
    bars: list[generate._Bar] = []

    class RecordingBar(generate._Bar):
        def __init__(self) -> None:
            super().__init__()
            bars.append(self)

        def update(self, status: str, step: int | None, total: int | None,
                   queue_position: int | None = None) -> None:
            calls.append((status, step, total, queue_position))
            super().update(status, step, total, queue_position)

    monkeypatch.setattr(generate, "_Bar", RecordingBar)
    status, data = generate.generate_remote(deployment.server.url, deployment.a.key, "tiny",
                                            {"prompt": "a pink star", "seed": 12, "output_format": "png"})

    assert status["status"] == "success" and status["outcome"]["seed"] == 12
    assert Image.open(io.BytesIO(data)).format == "PNG"
    assert calls[0][0] in ("queued", "processing") and calls[-1][0] == "success"
    assert all(isinstance(c[0], str) and not c[0].startswith("Status.") for c in calls)
    task = bars[0].progress.tasks[0]
    assert task.description == "done" and task.total and task.completed == task.total
