"""Wake-ups, pushed events and batches through real servers and worker processes on loopback.

The safety nets (the worker's poll, the events stream's re-read) are set to an hour here, far
beyond every wait of these tests: a request that an idle worker claims, or an events stream
that delivers ``success``, within the tests' waits was woken, not found by a poll. Nothing
asserts how fast; the outcome timings are printed.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from darkroom.testing.api import BASE, Api, start_deployment
from darkroom.testing.server import Process, Server, create_key, darkroom_env, wait_for

SAFETY_NET_S = "3600"
SLOW = {"DARKROOM_POLL_INTERVAL_S": SAFETY_NET_S, "DARKROOM_EVENTS_POLL_S": SAFETY_NET_S}


def _ready(api: Api, model: str = "tiny") -> None:
    """Until a worker serving ``model`` has registered (it loads its engines first)."""
    wait_for(lambda: httpx.get(f"{api.url}{BASE}/models/{model}", headers=api.headers, timeout=10)
             .json().get("qworkers", 0) >= 1, timeout=120, what=f"a worker for {model}")


def _follow(api: Api, request_id: str, timeout: float = 120) -> tuple[list[str], dict]:
    """The event names of a request's SSE stream until ``done``, and the done data."""
    names: list[str] = []
    with httpx.stream("GET", f"{api.url}{BASE}/requests/{request_id}/events", headers=api.headers,
                      timeout=timeout) as resp:
        assert resp.status_code == 200
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                names.append(event)
            elif line.startswith("data: ") and event == "done":
                return names, json.loads(line[6:])
    raise AssertionError(f"stream ended without done: {names}")


def _claim_delays(api: Api, n: int = 3, model: str = "tiny") -> list[float]:
    """Submit ``n`` requests one after another to an idle worker, following each over SSE;
    each request's recorded claim delay (outcome timings.queued_ms), in seconds."""
    delays = []
    for i in range(n):
        time.sleep(0.3 + 0.2 * i)  # the worker goes idle, asleep on its hour-long safety net
        submitted = api.submit(model, seed=i + 1)
        # The stream sees success within _follow's wait, long before its own safety-net re-read.
        names, done = _follow(api, submitted["request_id"])
        assert done["status"] == "success", done
        assert "status" in names and names[-1] == "done"
        delays.append(done["outcome"]["timings"]["queued_ms"] / 1000)
    return delays


def test_an_idle_worker_is_woken_by_a_submit_sqlite(tmp_path: Path, tiny_models: Path) -> None:
    dep = start_deployment(tmp_path, tiny_models, **SLOW)
    try:
        _ready(dep.a)
        delays = _claim_delays(dep.a)
    finally:
        dep.server.stop()
    print("claim delays (s):", delays)  # woken: a poll would have claimed them after an hour


@pytest.mark.postgres
def test_an_idle_worker_in_another_process_is_woken_by_a_submit_postgres(
        tmp_path: Path, tiny_models: Path, pg_cluster) -> None:  # noqa: ANN001
    env = darkroom_env(tmp_path / "data", tiny_models, DARKROOM_DATABASE_URL=pg_cluster.new_database(), **SLOW)
    key = create_key(env, "alice")
    server = Server(env, tmp_path / "serve.log", worker=False).start()
    worker = Process(["worker"], env, tmp_path / "worker.log").start()
    try:
        api = Api(server.url, key)
        _ready(api)
        delays = _claim_delays(api)
    finally:
        worker.stop()
        server.stop()
    print("claim delays (s):", delays)  # woken: a poll would have claimed them after an hour


def _pixels(api: Api, status: dict) -> np.ndarray:
    url = status["outcome"]["media_urls"][0]["url"]
    return np.asarray(Image.open(io.BytesIO(httpx.get(url, timeout=30).content)).convert("RGB"), dtype=np.int16)


@pytest.fixture()
def no_worker(tmp_path: Path, tiny_models: Path):
    """A server without a worker (requests wait), and a way to start worker processes on it."""
    dep = start_deployment(tmp_path, tiny_models, worker=False, DARKROOM_LEASE_S="3", DARKROOM_MAX_BATCH="4",
                           DARKROOM_PREVIEW_EVERY_STEPS="0")
    started: list[Process] = []

    def start_worker(**env: str) -> Process:
        proc = Process(["worker"], {**dep.env, **env}, tmp_path / f"worker{len(started)}.log").start()
        started.append(proc)
        return proc

    yield dep, start_worker
    for proc in started:
        proc.stop()
    dep.server.stop()


def test_a_batch_makes_the_images_each_request_makes_alone(no_worker) -> None:
    dep, start_worker = no_worker
    payloads = [dict(prompt=f"shape number {i}", seed=11 + i, output_format="png") for i in range(4)]
    batched = [dep.a.submit("tiny-full", **p)["request_id"] for p in payloads]
    worker = start_worker()
    done = [dep.a.wait(i) for i in batched]
    assert [d["status"] for d in done] == ["success"] * 4
    assert [d["outcome"]["batch_size"] for d in done] == [4] * 4  # one pipeline call
    alone = []
    for p in payloads:  # one at a time: each runs alone
        alone.append(dep.a.wait(dep.a.submit("tiny-full", **p)["request_id"]))
    assert [d["outcome"]["batch_size"] for d in alone] == [1] * 4
    for b, a in zip(done, alone):
        diff = np.abs(_pixels(dep.a, b) - _pixels(dep.a, a))
        assert diff.max() <= 1, f"batched and solo images differ by {diff.max()}/255"
    assert worker.alive()


def _all_processing(api: Api, ids: list[str]) -> bool:
    return all(api.status(i)["status"] == "processing" for i in ids)


def test_cancelling_one_request_of_a_batch_stops_only_that_one(no_worker) -> None:
    dep, start_worker = no_worker
    ids = [dep.a.submit("tiny-slow", seed=i + 1, steps=300)["request_id"] for i in range(3)]
    start_worker()
    wait_for(lambda: _all_processing(dep.a, ids), timeout=120, what="the batch to start")
    wait_for(lambda: (dep.a.status(ids[1]).get("progress") or {}).get("step", 0) >= 2, timeout=60,
             what="progress")
    assert dep.a.post(f"/requests/{ids[1]}/cancel").status_code == 200
    ends = [dep.a.wait(i, timeout=300) for i in ids]
    assert [e["status"] for e in ends] == ["success", "cancelled", "success"]
    assert ends[0]["outcome"]["batch_size"] == 3
    steps = [e["progress"] for e in ends]  # progress was reported per request
    assert steps[1]["step"] < 300 and steps[0]["step"] == steps[2]["step"] == 300


def test_kill_9_mid_batch_requeues_every_request_of_it(no_worker) -> None:
    dep, start_worker = no_worker
    ids = [dep.a.submit("tiny-slow", seed=i + 1, steps=300)["request_id"] for i in range(3)]
    first = start_worker()
    wait_for(lambda: _all_processing(dep.a, ids), timeout=120, what="the batch to start")
    first.kill()
    start_worker()
    ends = [dep.a.wait(i, timeout=300) for i in ids]
    assert [e["status"] for e in ends] == ["success"] * 3
    assert [e["attempts"] for e in ends] == [2, 2, 2]
