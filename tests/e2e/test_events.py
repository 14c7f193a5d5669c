"""Live request events (Server-Sent Events): a real server on loopback, read with httpx streaming.

The last tests drive the I/O-free stream core with fakes, for what takes too long to
wait for over HTTP (keep-alives, the time limit, a client going away).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from darkroom.api.events import EventTracker, Snapshot, event_stream
from darkroom.domain import Status
from darkroom.testing.api import Deployment, start_deployment
from darkroom.testing.server import wait_for

ROOT = "/api/v1/ie/requestqueue"
BASE = ROOT + "/apikey"
STEPS = 4  # of the gated model: each step is released by the test (StepGate)


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


GATE_DIR = Path(__file__).parent / "step_gate"
GATED_REGISTRY = """
default = "tiny-gated"

[models.tiny-gated]
pipeline = "flux"
path = "{path}"
brief_description = "the tiny model, each denoising step waiting for the test (tests/e2e/step_gate)"
[models.tiny-gated.parameters]
steps = {{ default = 4, minimum = 1, maximum = 50 }}
[models.tiny-gated.options]
native_area = 4096
max_sequence_length = 16
"""


@dataclass
class StepGate:
    """The test's side of ``step_gate/_darkroom_step_gate.py``: the worker begins a step only
    when the test allows it, so a test can hold a request at any step for as long as it likes."""

    path: Path

    def allow(self, steps: int) -> None:
        """Let the worker begin ``steps`` steps in all (counted from its start)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(steps))
        tmp.replace(self.path)

    def waiting_at(self) -> int | None:
        """The step (counted from the worker's start) that the worker waits to begin, if it has come to one."""
        reached = Path(f"{self.path}.reached")
        return int(reached.read_text()) if reached.exists() else None


@pytest.fixture()
def gated(tmp_path: Path, tiny_models: Path) -> Iterator[tuple[Deployment, StepGate]]:
    """A server whose one model, ``tiny-gated``, runs each denoising step when the test says."""
    model = tmp_path / "tiny-gated"
    shutil.copytree(tiny_models.parent / "tiny", model)
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["_darkroom_step_gate", "GatedScheduler"]
    (model / "model_index.json").write_text(json.dumps(index))
    registry = tmp_path / "models.toml"
    registry.write_text(GATED_REGISTRY.format(path=model))
    gate = StepGate(tmp_path / "gate")
    gate.allow(0)
    pythonpath = os.pathsep.join(p for p in (str(GATE_DIR), os.environ.get("PYTHONPATH")) if p)
    dep = start_deployment(tmp_path, registry, DARKROOM_TEST_STEP_GATE=str(gate.path), PYTHONPATH=pythonpath)
    try:
        yield dep, gate
    finally:
        gate.allow(10**9)  # nothing left waiting on the gate while the server drains
        dep.server.stop()


def test_stream_follows_a_request_from_queued_through_its_steps_to_success(gated) -> None:
    """Every step is held at the gate until the stream has reported the one before it, so the
    stream sees each step whatever the machine's speed."""
    deployment, gate = gated
    api = deployment.a
    # The worker holds a one-step request at the gate, so the next one is surely queued when we connect.
    blocker = api.submit("tiny-gated", steps=1, seed=1)["request_id"]
    api.wait(blocker, until=("processing",), timeout=120)
    wait_for(lambda: gate.waiting_at() == 0, timeout=120, what="the blocker to reach its first step")
    rid = api.submit("tiny-gated", steps=STEPS, seed=2)["request_id"]

    with events(api, rid) as stream:
        seen = iter(stream)
        first = next(seen)
        assert (first.event, first.data) == ("status", {"status": "queued", "queue_position": 0, "progress": None})
        gate.allow(1)  # the blocker's one step: then the worker claims ours and waits at its first step
        received = [first, *_until(seen, lambda e: e.event == "status")]
        for step in range(1, STEPS):
            gate.allow(1 + step)  # step `step` runs, then the worker waits at the next
            received += _until(seen, lambda e, s=step: e.event == "progress" and e.data["step"] == s)
        gate.allow(1 + STEPS)
        received += list(seen)  # to the end: the server closes the stream after `done`
    assert stream.retry is not None and stream.retry > 0

    names = [e.event for e in received]
    statuses = [e.data["status"] for e in received if e.event == "status"]
    assert statuses == ["queued", "processing", "success"], names
    assert names[-1] == "done" and names[-2] == "status"
    processing, success = names.index("status", 1), len(names) - 2
    steps = [e.data["step"] for e in received if e.event == "progress"]
    # The last step may end the request before its progress is written: all the others are seen.
    assert steps in (list(range(1, STEPS)), list(range(1, STEPS + 1))), steps
    assert all(e.data["total"] == STEPS for e in received if e.event == "progress")
    assert all(processing < i < success for i, e in enumerate(received) if e.event in ("progress", "preview"))
    ids = [int(e.id) for e in received]
    assert ids == list(range(1, len(received) + 1))

    done = received[-1].data
    assert done["request_id"] == rid and done["status"] == "success"
    assert done["outcome"]["media_urls"] and done["progress"] == {"step": STEPS, "total": STEPS}
    assert done["preview"] is None


def _until(seen: Iterator[Event], stop: Callable[[Event], bool]) -> list[Event]:
    """The events up to and including the first for which ``stop`` is true."""
    got = []
    for event in seen:
        got.append(event)
        if stop(event):
            return got
    raise AssertionError(f"the stream ended before the awaited event: {[e.event for e in got]}")


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
        with events(api, rid, prefix=prefix) as stream:
            received = list(stream)  # ends: the server closes a stream once it has sent `done`
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
