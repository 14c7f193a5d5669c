"""Live request events (Server-Sent Events): a real server on loopback, read with httpx streaming.

The last tests drive the I/O-free stream core with fakes, for what takes too long to
wait for over HTTP (keep-alives, the time limit, a client going away).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from PIL import Image

from darkroom.api.events import EventTracker, Snapshot, event_stream
from darkroom.domain import Status

ROOT = "/api/v1/ie/requestqueue"
BASE = ROOT + "/apikey"
# Long enough for several 0.5 s polls to see different steps, even on a fast machine.
STEPS = 300  # several seconds of work, so the stream sees more than one step


@dataclass
class Event:
    event: str = "message"
    data: Any = None
    id: str | None = None


@dataclass
class Stream:
    """Events parsed from one response as the SSE spec says, plus its retry and comment lines."""

    response: httpx.Response
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Event]:
        event, data, event_id = "", [], None
        for line in self.response.iter_lines():
            if not line:  # a blank line dispatches the event
                if data:
                    yield Event(event or "message", json.loads("\n".join(data)), event_id)
                event, data = "", []
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
            elif name == "retry" and value.isdigit():
                self.retry = int(value)


@contextmanager
def events(api: Any, request_id: str, *, prefix: str = BASE) -> Iterator[Stream]:
    url = f"{api.url}{prefix}/requests/{request_id}/events"
    with httpx.stream("GET", url, headers=api.headers, timeout=httpx.Timeout(30, read=60)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


def test_stream_follows_a_request_from_queued_through_its_steps_to_success(deployment) -> None:
    api = deployment.a
    # Keep the worker busy so that the request is surely still queued when we connect.
    blocker = api.submit("tiny-slow", steps=2000, seed=1)["request_id"]
    api.wait(blocker, until=("processing",), timeout=120)
    rid = api.submit("tiny-slow", steps=STEPS, seed=2)["request_id"]

    with events(api, rid) as stream:
        seen = iter(stream)
        first = next(seen)
        assert (first.event, first.data) == ("status", {"status": "queued", "queue_position": 0, "progress": None})
        assert api.post(f"/requests/{blocker}/cancel").status_code == 200
        received = [first, *seen]  # to the end: the server closes the stream after `done`
    assert stream.retry is not None and stream.retry > 0

    names = [e.event for e in received]
    statuses = [e.data["status"] for e in received if e.event == "status"]
    assert statuses == ["queued", "processing", "success"], names
    assert names[-1] == "done" and names[-2] == "status"
    processing, success = names.index("status", 1), len(names) - 2
    steps = [e.data["step"] for e in received if e.event == "progress"]
    assert len(steps) >= 2 and steps == sorted(set(steps)), steps
    assert all(e.data["total"] == STEPS for e in received if e.event == "progress")
    assert all(processing < i < success for i, e in enumerate(received) if e.event in ("progress", "preview"))
    ids = [int(e.id) for e in received]
    assert ids == list(range(1, len(received) + 1))

    done = received[-1].data
    assert done["request_id"] == rid and done["status"] == "success"
    assert done["outcome"]["media_urls"] and done["progress"] == {"step": STEPS, "total": STEPS}
    assert done["preview"] is None


def test_preview_event_links_a_small_jpeg(deployment) -> None:
    api = deployment.a
    rid = api.submit("tiny-slow", steps=2000, seed=3, aspect_ratio="16:9")["request_id"]
    with events(api, rid) as stream:
        seen = iter(stream)
        preview = next(e for e in seen if e.event == "preview")
        # Signed like results: no API key needed. The step in the URL keeps caches honest.
        image = httpx.get(preview.data["url"], timeout=30)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/jpeg" and image.content[:2] == b"\xff\xd8"
        decoded = Image.open(io.BytesIO(image.content))
        assert decoded.format == "JPEG" and max(decoded.size) <= 256 and decoded.width > decoded.height
        assert f"step={preview.data['step']}" in preview.data["url"]
        status = api.status(rid)
        assert status["status"] == "processing" and status["preview"]["step"] >= preview.data["step"]

        assert api.post(f"/requests/{rid}/cancel").status_code == 200
        rest = list(seen)
    assert rest[-1].event == "done" and rest[-1].data["status"] == "cancelled"
    assert api.status(rid)["preview"] is None  # shown only while processing


def test_late_connect_gets_the_current_state_then_done(deployment) -> None:
    api = deployment.a
    rid = api.submit("tiny", seed=4)["request_id"]
    final = api.wait(rid)
    assert final["status"] == "success"
    for prefix in (BASE, ROOT):
        started = time.monotonic()
        with events(api, rid, prefix=prefix) as stream:
            received = list(stream)
        assert time.monotonic() - started < 5  # no waiting: it has already ended
        assert [e.event for e in received] == ["status", "done"]
        assert received[0].data == {"status": "success", "queue_position": None, "progress": {"step": 2, "total": 2}}
        done = received[1].data
        assert {k: done[k] for k in ("request_id", "status", "finished_at")} == \
            {k: final[k] for k in ("request_id", "status", "finished_at")}
        assert done["outcome"]["seed"] == final["outcome"]["seed"]


def test_another_keys_request_is_404_before_any_stream(deployment) -> None:
    a, b = deployment.a, deployment.b
    rid = a.submit("tiny", seed=5)["request_id"]
    for api, request_id in ((b, rid), (a, "no-such-request")):
        resp = api.get(f"/requests/{request_id}/events")
        assert resp.status_code == 404
        assert resp.headers["content-type"] == "application/json"
        assert resp.json()["error"]["code"] == "request_not_found"
    unauthenticated = httpx.get(f"{a.url}{BASE}/requests/{rid}/events", timeout=30)
    assert unauthenticated.status_code == 401
    a.wait(rid)


# -- the stream core, with fakes ---------------------------------------------------------


def snap(status: Status, step: int | None = None, *, position: int | None = None,
         preview: int | None = None) -> Snapshot:
    return Snapshot(
        status=status,
        queue_position=position,
        progress={"step": step, "total": 10} if step is not None else None,
        preview={"step": preview, "url": f"http://x/media/p.jpeg?step={preview}"} if preview else None,
        final={"status": status.value} if status.is_terminal else None,
    )


def collect(snaps: list[Snapshot], *, disconnect_after: int | None = None, **limits: float) -> list[str]:
    """The chunks event_stream yields over ``snaps`` (the last one repeats)."""
    polls = iter(snaps[1:])
    last = [snaps[0]]
    count = [0]

    async def fetch() -> Snapshot:
        last[0] = next(polls, last[0])
        return last[0]

    async def is_disconnected() -> bool:
        count[0] += 1
        return disconnect_after is not None and count[0] > disconnect_after

    async def run() -> list[str]:
        options = {"poll_s": 0.001, "keepalive_s": 60.0, "max_s": 60.0, **limits}
        return [chunk async for chunk in event_stream(fetch, snaps[0], is_disconnected, **options)]

    return anyio.run(run)


def test_tracker_sends_only_changes_and_restarts_steps_after_a_requeue() -> None:
    tracker = EventTracker()
    sent = [name for s in (snap(Status.QUEUED, position=2), snap(Status.QUEUED, position=2),
                           snap(Status.QUEUED, position=1), snap(Status.PROCESSING, 3),
                           snap(Status.PROCESSING, 3, preview=3), snap(Status.QUEUED, position=0),
                           snap(Status.PROCESSING, 3), snap(Status.SUCCESS, 10))
            for name, _ in tracker.events(s)]
    assert sent == ["status", "status", "status", "progress", "preview", "status", "status", "progress",
                    "status", "done"]
    assert tracker.finished and tracker.events(snap(Status.SUCCESS, 10)) == []


def test_stream_keeps_alive_closes_at_its_time_limit_and_when_the_client_goes() -> None:
    idle = collect([snap(Status.PROCESSING, 1)], keepalive_s=0.02, max_s=0.15)
    assert idle[0].startswith("retry: ") and idle[1].startswith("id: 1\nevent: status\n")
    assert idle.count(": keep-alive\n\n") >= 2
    assert idle[-1].startswith(": stream time limit")

    gone = collect([snap(Status.PROCESSING, 1), snap(Status.PROCESSING, 2), snap(Status.PROCESSING, 3)],
                   disconnect_after=1)
    assert [c.split("\n")[1] for c in gone[1:]] == ["event: status", "event: progress", "event: progress"]

    ended = collect([snap(Status.QUEUED, position=0), snap(Status.PROCESSING, 5), snap(Status.FAILED, 5)])
    assert ended[-1].startswith("id: 5\nevent: done\n")  # and then the generator returned
