"""The wait loop and generate(), through both clients."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from darkroom.client import AsyncClient, Progress, RequestFailed, RequestStatus, Status, WaitTimeout


def test_wait_follows_queued_processing_success(make_client, server, fx):
    server.on(
        "GET",
        f"/requests/{fx.REQUEST_ID}",
        fx.ok(fx.status_json("queued", queue_position=2)),
        fx.ok(fx.status_json("queued", queue_position=1)),
        fx.ok(fx.status_json("processing", progress={"step": 1, "total": 4})),
        fx.ok(fx.status_json("processing", progress={"step": 1, "total": 4})),  # no change
        fx.ok(fx.status_json("processing", progress={"step": 3, "total": 4})),
        fx.ok(fx.status_json("success")),
    )
    seen: list[RequestStatus] = []

    final = make_client(server).wait(fx.REQUEST_ID, poll_interval=0, on_update=seen.append, stream=False)

    assert final.succeeded and final.urls
    assert len(server.requests) == 6  # polls only: stream=False never asks for the events
    assert [(s.status, s.queue_position, s.progress) for s in seen] == [
        (Status.QUEUED, 2, None),
        (Status.QUEUED, 1, None),
        (Status.PROCESSING, None, Progress(1, 4)),
        (Status.PROCESSING, None, Progress(3, 4)),
        (Status.SUCCESS, None, None),
    ]


def test_wait_returns_a_failed_request_without_raising(make_client, server, fx):
    server.on("GET", "/requests/x", fx.ok(fx.status_json("processing")), fx.ok(fx.status_json("failed")))
    final = make_client(server).wait("x", poll_interval=0)
    assert final.status is Status.FAILED and final.error_code == "engine_error"


def test_wait_on_a_finished_request_polls_once(make_client, server, fx):
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(fx.status_json("cancelled")))
    done = RequestStatus.from_json(fx.status_json("cancelled"))
    assert make_client(server).wait(done).status is Status.CANCELLED
    assert len(server.requests) == 1


def test_wait_times_out_with_the_last_status(make_client, server, fx):
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(fx.status_json("queued", queue_position=3)))
    client = make_client(server)
    started = time.monotonic()

    with pytest.raises(WaitTimeout) as info:
        client.wait(fx.REQUEST_ID, timeout=0.1, poll_interval=0.02)

    assert time.monotonic() - started >= 0.1  # never before the deadline (no upper bound: machines differ)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.request_id == fx.REQUEST_ID and err.timeout == 0.1
    assert err.last.status is Status.QUEUED and err.last.queue_position == 3
    # Polled on the interval, never faster: the first GET, then one after each sleep of 0.02 s (the
    # last sleep lands on the deadline), however slow the machine makes each of them.
    assert 1 <= server.count("GET", f"/requests/{fx.REQUEST_ID}") <= 1 + 5 + 1


def test_wait_with_no_timeout_polls_until_done(make_client, server, fx):
    server.on(
        "GET", "/requests/x", *[fx.ok(fx.status_json("processing"))] * 5, fx.ok(fx.status_json("success"))
    )
    assert make_client(server).wait("x", timeout=None, poll_interval=0).succeeded


def test_wait_rejects_a_negative_poll_interval(make_client, server):
    with pytest.raises(ValueError):
        make_client(server).wait("x", poll_interval=-1)
    assert server.requests == []


def test_generate_submits_then_waits(make_client, server, fx):
    server.on("POST", "/requests", fx.ok(fx.status_json("queued")))
    server.on(
        "GET",
        f"/requests/{fx.REQUEST_ID}",
        fx.ok(fx.status_json("processing", progress={"step": 2, "total": 4})),
        fx.ok(fx.status_json("success")),
    )
    updates: list[Status] = []

    result = make_client(server).generate(
        "darkroom-mini",
        "a fox",
        aspect_ratio="16:9",
        seed=1,
        poll_interval=0,
        on_update=lambda s: updates.append(s.status),
    )

    assert result.succeeded and result.outcome["width"] == 1024
    assert json.loads(server.requests[0].content) == {
        "model": "darkroom-mini",
        "payload": {"prompt": "a fox", "aspect_ratio": "16:9", "seed": 1},
    }
    assert updates == [Status.PROCESSING, Status.SUCCESS]


@pytest.mark.parametrize(("final", "code"), [("failed", "engine_error"), ("cancelled", "cancelled")])
def test_generate_raises_request_failed_with_the_outcome_code(make_client, server, fx, final, code):
    server.on("POST", "/requests", fx.ok(fx.status_json("queued")))
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(fx.status_json(final)))
    with pytest.raises(RequestFailed) as info:
        make_client(server).generate("darkroom-mini", "a fox", poll_interval=0)
    err = info.value
    assert err.code == code and err.request_id == fx.REQUEST_ID
    assert err.status.status is Status(final)
    assert err.status_code is None


def test_generate_reports_moderation_and_a_bare_cancel(make_client, server, fx):
    moderated = fx.status_json("failed", outcome={"error": {"code": "input_moderated", "message": "no"}})
    bare_cancel = fx.status_json("cancelled", outcome=None)
    server.on("POST", "/requests", fx.ok(fx.status_json("queued")))
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(moderated), fx.ok(bare_cancel))
    client = make_client(server)
    with pytest.raises(RequestFailed) as first:
        client.generate("darkroom-mini", "a fox", poll_interval=0)
    with pytest.raises(RequestFailed) as second:
        client.generate("darkroom-mini", "a fox", poll_interval=0)
    assert (first.value.code, first.value.message) == ("input_moderated", "no")
    assert (second.value.code, second.value.message) == ("cancelled", "request cancelled")


def test_async_wait_awaits_a_coroutine_on_update(fx):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return fx.sse_response(("status", {"status": "success"}), ("done", fx.status_json("success")))
        return httpx.Response(200, json=fx.status_json("processing"))

    seen: list[Status] = []

    async def on_update(status: RequestStatus) -> None:
        await asyncio.sleep(0)
        seen.append(status.status)

    async def main() -> RequestStatus:
        async with AsyncClient(fx.BASE_URL, fx.API_KEY, transport=httpx.MockTransport(handler)) as client:
            return await client.wait("x", poll_interval=0, on_update=on_update)

    assert asyncio.run(main()).succeeded
    assert seen == [Status.PROCESSING, Status.SUCCESS]


def test_async_client_works_with_an_async_handler(fx):
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=fx.status_json("success"))

    async def main() -> RequestStatus:
        async with AsyncClient(fx.BASE_URL, fx.API_KEY, transport=httpx.MockTransport(handler)) as client:
            return await client.get("x")

    assert asyncio.run(main()).succeeded
