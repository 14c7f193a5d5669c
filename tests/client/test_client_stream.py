"""wait() over the events stream, with scripted answers: what it reads, when it reconnects,
when it falls back to polling. Every test runs against both clients (``make_client``).

The same behaviour against a real server is in test_client_live.py.
"""

from __future__ import annotations

import time

import httpx
import pytest

from darkroom.client import AuthenticationError, Progress, RequestStatus, Status, WaitTimeout
from darkroom.client._base import Waiter
from darkroom.client._stream import StatusStream

EVENTS = "/events"


def status_path(fx) -> str:
    return f"/requests/{fx.REQUEST_ID}"


def events_path(fx) -> str:
    return f"/requests/{fx.REQUEST_ID}/events"


def a_run(fx) -> list[tuple[str, object]]:
    """A request's events from second place in the queue to success (docs/events.md)."""
    return [
        ("status", {"status": "queued", "queue_position": 1, "progress": None}),
        ("status", {"status": "queued", "queue_position": 0, "progress": None}),
        ("status", {"status": "processing", "queue_position": None, "progress": None}),
        ("progress", {"step": 1, "total": 4}),
        ("preview", {"step": 1, "url": fx.BASE_URL + "/media/previews/p.jpeg?step=1"}),
        ("progress", {"step": 3, "total": 4}),
        ("status", {"status": "success", "queue_position": None, "progress": {"step": 4, "total": 4}}),
        ("done", fx.status_json("success", progress={"step": 4, "total": 4})),
    ]


def gets(server, fx) -> int:
    return sum(1 for r in server.requests if r.url.path.endswith(status_path(fx)))


def events_calls(server) -> list[httpx.Request]:
    return [r for r in server.requests if r.url.path.endswith(EVENTS)]


def test_wait_follows_the_stream_from_one_get_to_done(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued", queue_position=1)))
    server.on("GET", events_path(fx), fx.sse_response(*a_run(fx)))
    seen: list[RequestStatus] = []

    final = make_client(server).wait(fx.REQUEST_ID, poll_interval=30, on_update=seen.append)

    assert final.succeeded and final.urls and final.outcome["seed"] == 42
    assert gets(server, fx) == 1 and len(events_calls(server)) == 1
    assert [(s.status, s.queue_position, s.progress) for s in seen] == [
        (Status.QUEUED, 1, None),  # the GET; the stream's first event repeats it: no call
        (Status.QUEUED, 0, None),
        (Status.PROCESSING, None, None),
        (Status.PROCESSING, None, Progress(1, 4)),
        (Status.PROCESSING, None, Progress(3, 4)),
        (Status.SUCCESS, None, Progress(4, 4)),  # from done: the full object, never a bare word
    ]
    # Events merge into the GET's object: the fields they lack are still there.
    assert all(s.model == "darkroom-mini" and s.payload == {"prompt": "a fox"} for s in seen)
    assert seen[-1] is final
    request = events_calls(server)[0]
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["authorization"] == f"Bearer {fx.API_KEY}"
    assert "last-event-id" not in request.headers


def test_a_preview_is_kept_in_raw_while_processing(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("processing")))
    run = a_run(fx)[3:6] + [("status", {"status": "queued", "queue_position": 0, "progress": None})]
    server.on("GET", events_path(fx), fx.sse_response(*run, ("done", fx.status_json("cancelled"))))
    seen: list[RequestStatus] = []

    assert make_client(server).wait(fx.REQUEST_ID, on_update=seen.append).status is Status.CANCELLED

    assert seen[1].raw.get("preview") is None and seen[2].raw["preview"]["step"] == 1  # alone, no update
    assert seen[3].status is Status.QUEUED and seen[3].raw["preview"] is None  # only while processing


def test_a_finished_request_needs_no_stream(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("failed")))
    assert make_client(server).wait(fx.REQUEST_ID).status is Status.FAILED
    assert events_calls(server) == []


def test_stream_false_only_polls(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued")), fx.ok(fx.status_json("success")))
    server.on("GET", events_path(fx), fx.sse_response(*a_run(fx)))
    assert make_client(server).wait(fx.REQUEST_ID, poll_interval=0, stream=False).succeeded
    assert events_calls(server) == [] and gets(server, fx) == 2


def test_done_without_a_usable_status_object_gets_it(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("processing")), fx.ok(fx.status_json("success")))
    server.on("GET", events_path(fx), fx.sse_response(("done", {})))
    assert make_client(server).wait(fx.REQUEST_ID, poll_interval=30).succeeded
    assert gets(server, fx) == 2


def test_unknown_events_and_data_that_is_not_json_are_ignored(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("processing")))
    body = (b"retry: 10\n\n: keep-alive\n\nevent: status\ndata: {oops\n\n"
            b"event: hello\ndata: {}\n\ndata: 1\n\n"
            b"event: status\ndata: {\"status\": \"paused\"}\n\n") + fx.sse(("done", fx.status_json("success")))
    server.on("GET", events_path(fx), httpx.Response(200, headers={"content-type": "text/event-stream"},
                                                     content=body))
    seen: list[Status] = []
    assert make_client(server).wait(fx.REQUEST_ID, on_update=lambda s: seen.append(s.status)).succeeded
    assert seen == [Status.PROCESSING, Status.SUCCESS]


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(404, json={"detail": "Not Found"}),  # a server from before the events route
        httpx.Response(405, text="method not allowed"),
        httpx.Response(500, json={"error": {"code": "internal_error", "message": "boom"}}),
        httpx.Response(200, json={"not": "a stream"}),  # e.g. a proxy that rewrote it
    ],
    ids=["404", "405", "500", "200-json"],
)
def test_a_refused_stream_falls_back_to_polling_at_once(make_client, server, fx, refusal):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued")), fx.ok(fx.status_json("processing")),
              fx.ok(fx.status_json("success")))
    server.on("GET", events_path(fx), refusal)
    seen: list[Status] = []

    final = make_client(server).wait(fx.REQUEST_ID, poll_interval=0, on_update=lambda s: seen.append(s.status))

    assert final.succeeded and seen == [Status.QUEUED, Status.PROCESSING, Status.SUCCESS]
    assert len(events_calls(server)) == 1 and gets(server, fx) == 3


def test_a_401_on_the_stream_raises_like_any_call(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued")))
    server.on("GET", events_path(fx), fx.error(401, "unauthorized", "key revoked"))
    with pytest.raises(AuthenticationError) as info:
        make_client(server).wait(fx.REQUEST_ID)
    assert info.value.code == "unauthorized" and info.value.message == "key revoked"
    assert len(events_calls(server)) == 1


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.Response(503, json={"error": {"code": "x", "message": "y"}})],
    ids=["connect-error", "503"],
)
def test_a_failing_stream_is_retried_max_retries_times_then_polled(make_client, server, fx, failure):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued")), fx.ok(fx.status_json("success")))
    server.on("GET", events_path(fx), failure)
    assert make_client(server, max_retries=2).wait(fx.REQUEST_ID, poll_interval=0).succeeded
    assert len(events_calls(server)) == 3 and gets(server, fx) == 2


def test_a_stream_broken_mid_way_reconnects_with_last_event_id(make_client, server, fx):
    run = a_run(fx)
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued", queue_position=1)))
    server.on(
        "GET",
        events_path(fx),
        fx.cut_response(fx.sse(*run[:4])),  # up to step 1 of 4, then the connection drops
        # The current state again (as a reconnect gets it), then the rest.
        fx.sse_response(("status", {"status": "processing", "queue_position": None,
                                    "progress": {"step": 1, "total": 4}}), *run[3:], retry=None, first_id=5),
    )
    seen: list[RequestStatus] = []

    final = make_client(server).wait(fx.REQUEST_ID, poll_interval=30, on_update=seen.append)

    assert final.succeeded and gets(server, fx) == 1
    first, second = events_calls(server)
    assert "last-event-id" not in first.headers and second.headers["last-event-id"] == "4"
    # The replayed state after the reconnect is no news: on_update sees each change once.
    assert [s.progress.step if s.progress else s.status.value for s in seen] == \
        ["queued", "queued", "processing", 1, 3, 4]


def test_a_stream_that_ends_before_done_is_reopened(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued", queue_position=0)))
    server.on(
        "GET",
        events_path(fx),
        fx.sse_response(("status", {"status": "queued", "queue_position": 0, "progress": None})),  # time limit
        fx.sse_response(("done", fx.status_json("success")), first_id=2),
    )
    assert make_client(server).wait(fx.REQUEST_ID, poll_interval=30).succeeded
    assert len(events_calls(server)) == 2 and gets(server, fx) == 1


def test_a_stream_that_keeps_breaking_without_news_falls_back(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("processing")), fx.ok(fx.status_json("processing")),
              fx.ok(fx.status_json("success")))
    same = fx.sse(("status", {"status": "processing", "queue_position": None, "progress": None}))
    server.on("GET", events_path(fx), fx.cut_response(same))
    assert make_client(server, max_retries=1).wait(fx.REQUEST_ID, poll_interval=0).succeeded
    assert len(events_calls(server)) == 2 and gets(server, fx) == 3


def test_every_connection_is_closed_however_it_ends(make_client, server, fx):
    bodies: list = []

    def broken(request: httpx.Request) -> httpx.Response:
        bodies.append(fx.CutStream(fx.sse(("progress", {"step": len(bodies) + 1, "total": 9}))))
        return httpx.Response(200, headers=fx.SSE_HEADERS, stream=bodies[-1])

    server.on("GET", status_path(fx), fx.ok(fx.status_json("processing")), fx.ok(fx.status_json("success")))
    server.on("GET", events_path(fx), broken, broken, fx.error(503, "model_unavailable"))
    assert make_client(server, max_retries=0).wait(fx.REQUEST_ID, poll_interval=0).succeeded
    assert len(bodies) == 2 and all(body.closed for body in bodies)


def test_news_resets_the_reconnect_count(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("processing")))
    steps = [fx.cut_response(fx.sse(("progress", {"step": n, "total": 9}), first_id=n)) for n in range(1, 6)]
    server.on("GET", events_path(fx), *steps, fx.sse_response(("done", fx.status_json("success"))))
    # Five breaks, more than max_retries, but each connection brought a new step.
    assert make_client(server, max_retries=1).wait(fx.REQUEST_ID, poll_interval=30).succeeded
    assert len(events_calls(server)) == 6 and gets(server, fx) == 1


def test_wait_timeout_while_the_stream_keeps_reconnecting(make_client, server, fx):
    server.on("GET", status_path(fx), fx.ok(fx.status_json("queued", queue_position=3)))
    server.on("GET", events_path(fx), fx.sse_response(("status", {"status": "queued", "queue_position": 2})))
    client = make_client(server, retry_backoff=0.05, max_retries=1000)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        client.wait(fx.REQUEST_ID, timeout=0.3, poll_interval=30)
    assert time.monotonic() - started < 10  # not the 30 s poll interval
    assert info.value.last.queue_position == 2


# -- the I/O-free parts ---------------------------------------------------------------------------


def test_waiter_stream_read_timeout_stays_within_the_deadline():
    assert Waiter("x", None, 0.5).stream_read_timeout() == 30.0  # longer than the 15 s keep-alive
    short = Waiter("x", 2.0, 0.5)
    assert 1.5 < short.stream_read_timeout() <= 2.0
    assert not short.stream_overruns(2.0)  # opened just now, with what is left: fine
    assert short.stream_overruns(30.0)  # a read could block 28 s past the deadline: reopen
    assert not Waiter("x", None, 0.5).stream_overruns(30.0)
    with pytest.raises(WaitTimeout):
        Waiter("x", 0.0, 0.5).stream_read_timeout()


def test_status_stream_merges_and_holds_back_a_terminal_word(fx):
    stream = StatusStream(RequestStatus.from_json(fx.status_json("processing")))
    updates = stream.feed(fx.sse(("progress", {"step": 2, "total": 8}),
                                 ("status", {"status": "failed", "queue_position": None, "progress": None})).decode())
    assert [u.status.progress for u in updates] == [Progress(2, 8)]
    assert stream.last_event_id == "2"
    [done] = stream.feed(fx.sse(("done", fx.status_json("failed")), retry=None, first_id=3).decode())
    assert done.done and done.status.status is Status.FAILED and done.status.error_code == "engine_error"
    stream.reconnect()
    assert stream.last_event_id == "3"  # carried over to the next connection
    [other] = stream.feed(fx.sse(("done", fx.status_json("success", request_id="someone-else"))).decode())
    assert other.done and other.status is None  # not this request's object: the caller GETs it
