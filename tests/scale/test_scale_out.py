"""Scale-out under faults: 2 API replicas and 3 workers, separate processes with separate data
directories, sharing nothing but a PostgreSQL database and an S3 bucket (a real Ceph radosgw).

Every test asserts outcomes, never speed: every request answered 2xx ends, exactly once (one
outcome, its result object in the bucket), whatever was killed or restarted meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from darkroom.domain import Status
from darkroom.store import Store
from darkroom.testing.api import BASE, Api
from darkroom.testing.server import Process, Server, create_key, darkroom_env, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

WORKER_MODELS = ["--model", "tiny", "--model", "tiny-slow", "--model", "tiny-edit"]


class Deployment:
    """The processes, the shared store (for assertions) and the bucket."""

    def __init__(self, root: Path, tiny_models: Path, db_url: str, s3) -> None:  # noqa: ANN001
        self.root = root
        self.s3 = s3
        self.bucket = f"scale-{uuid.uuid4().hex[:8]}"
        self.prefix = "dr"
        self.shared = {
            "DARKROOM_DATABASE_URL": db_url,
            "DARKROOM_STORAGE_URL": f"s3://{self.bucket}/{self.prefix}",
            "DARKROOM_S3_ENDPOINT_URL": s3.endpoint_url,
            "DARKROOM_S3_REGION": s3.region,
            "DARKROOM_S3_ACCESS_KEY_ID": s3.access_key,
            "DARKROOM_S3_SECRET_ACCESS_KEY": s3.secret_key,
            # Every replica signs and checks the same way (otherwise each makes its own under its data dir).
            "DARKROOM_SECRET_KEY": "scale-test-url-signing-key-0123456789",
            "DARKROOM_WEBHOOK_SECRET": "whsec_c2NhbGUtdGVzdC13ZWJob29rLXNlY3JldA==",
            "DARKROOM_LEASE_S": "6",
            # Ten kills may hit one request more than the default 3 times: this guard is for
            # requests that crash their worker themselves, which these do not.
            "DARKROOM_MAX_ATTEMPTS": "20",
            "DARKROOM_WORKER_DEAD_AFTER_S": "12",
            "DARKROOM_PREVIEW_EVERY_STEPS": "0",
            "DARKROOM_IMAGE_MODERATION": "fallback",
            # Webhooks may reach the test's receiver on loopback; the official BFL client's model name.
            "DARKROOM_URL_ALLOWLIST": "127.0.0.0/8",
            "DARKROOM_WEBHOOK_POLL_INTERVAL_S": "0.2",
            "DARKROOM_ALIASES": '["flux-kontext-pro=tiny-edit"]',
        }
        self.models = tiny_models
        self.store = Store(db_url)
        self.apis: list[Server] = []
        self.workers: list[Process] = []
        self._n = 0

    def env(self, name: str) -> dict[str, str]:
        return darkroom_env(self.root / f"data-{name}", self.models, **self.shared)

    def start(self) -> Deployment:
        self.keys = [create_key(self.env("keys"), f"key{i}") for i in range(3)]
        self.apis = [Server(self.env(f"api{i}"), self.root / f"api{i}.log", worker=False).start() for i in range(2)]
        for _ in range(3):
            self.start_worker()
        wait_for(lambda: self.store.active_workers("tiny") >= 3, timeout=240, what="3 workers")
        return self

    def start_worker(self) -> Process:
        self._n += 1
        proc = Process(["worker", *WORKER_MODELS], self.env(f"worker{self._n}"),
                       self.root / f"worker{self._n}.log").start()
        self.workers.append(proc)
        return proc

    def api(self, i: int, key: int = 0) -> Api:
        return Api(self.apis[i].url, self.keys[key])

    def stop(self) -> None:
        for proc in [*self.workers, *self.apis]:
            proc.stop()
        self.store.close()

    # -- assertions ---------------------------------------------------------------------

    def objects(self, request_id: str) -> list[str]:
        listed = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/results/{request_id}/")
        return [o["Key"] for o in listed.get("Contents", [])]

    def wait_ended(self, ids: list[str], timeout: float = 600) -> dict[str, object]:
        pending = set(ids)
        ended: dict[str, object] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for rid in list(pending):
                request = self.store.get_request(rid)
                if request is not None and request.status.is_terminal:
                    ended[rid] = request
                    pending.discard(rid)
            if pending:
                time.sleep(0.5)
        assert not pending, f"{len(pending)} requests never ended, e.g. {sorted(pending)[:3]}:\n{self.tails()}"
        return ended

    def assert_exactly_once(self, ended: dict[str, object]) -> None:
        for rid, request in ended.items():
            assert request.status == Status.SUCCESS, (rid, request.status, request.error)
            [media] = request.outcome["media"]
            stored = self.objects(rid)
            assert f"{self.prefix}/{media['key']}" in stored, (rid, stored)
            # One object per attempt at most: an attempt killed after its put leaves one it never finished.
            assert len(stored) <= request.attempts, (rid, stored, request.attempts)

    def tails(self) -> str:
        return "\n".join(f"== {p.log_path.name}\n{p.log_tail(15)}" for p in [*self.apis, *self.workers])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, pg_cluster, s3_server):  # noqa: ANN001
    dep = Deployment(tmp_path_factory.mktemp("scale"), tiny_models, pg_cluster.new_database(), s3_server).start()
    yield dep
    dep.stop()


def _submit(api: Api, model: str = "tiny", **payload) -> str | None:
    """Submit; the request id on a 2xx, None if the replica did not answer (it was killed)."""
    payload.setdefault("prompt", "a red circle")
    try:
        resp = api.post("/requests", {"model": model, "payload": payload})
    except httpx.HTTPError:
        return None
    assert resp.status_code == 200, resp.text
    return resp.json()["request_id"]


def test_300_requests_through_both_replicas_end_exactly_once(deployment: Deployment) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def client(api_index: int, key: int) -> None:
        for n in range(50):
            rid = _submit(deployment.api(api_index, key), steps=1, seed=1000 * key + n + 1)
            with lock:
                ids.append(rid)

    threads = [threading.Thread(target=client, args=(a, k)) for a in range(2) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 300 and None not in ids
    ended = deployment.wait_ended(ids)
    deployment.assert_exactly_once(ended)
    # Every result downloads through the other replica too (a presigned URL on the shared bucket).
    for rid in random.Random(0).sample(ids, 40):
        key = next(i for i in range(3) if deployment.store.get_request(rid).key_id
                   == deployment.store.authenticate(deployment.keys[i]).id)
        status = deployment.api(1, key).status(rid)
        assert status["status"] == "success"
        assert httpx.get(status["outcome"]["media_urls"][0]["url"], timeout=30).status_code == 200


def test_kill_9_of_a_worker_mid_request_ten_times(deployment: Deployment) -> None:
    ids: list[str] = []
    rng = random.Random(1)

    def top_up() -> None:
        # Keep work in flight, however fast the machine: a kill must find a request running.
        unfinished = [i for i in ids if not deployment.store.get_request(i).status.is_terminal]
        for n in range(max(0, 12 - len(unfinished))):
            ids.append(_submit(deployment.api(n % 2, n % 3), "tiny-slow", steps=60, seed=len(ids) + 1))

    def busy():
        top_up()
        alive = {p.pid: p for p in deployment.workers if p.alive()}
        return [alive[w.pid] for w in deployment.store.list_workers() if w.current and w.pid in alive]

    for _ in range(10):
        victim = rng.choice(wait_for(busy, timeout=240, what="a worker holding a request"))
        victim.kill()
        deployment.start_worker()
    ended = deployment.wait_ended(ids)
    deployment.assert_exactly_once(ended)
    assert any(r.attempts > 1 for r in ended.values())  # the kills did hit running requests


def test_kill_9_of_an_api_replica_during_a_burst(deployment: Deployment) -> None:
    answered: list[str] = []
    victim = deployment.apis[0]

    def burst() -> None:
        for n in range(120):
            rid = _submit(deployment.api(0), steps=1, seed=5000 + n)
            if rid is None:
                return  # the replica is gone
            answered.append(rid)

    thread = threading.Thread(target=burst)
    thread.start()
    wait_for(lambda: len(answered) >= 20, timeout=120, what="the burst to get going")
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=120)
    victim.proc.wait(timeout=30)
    deployment.apis[0] = Server(victim.env, victim.log_path, worker=False, port=victim.port).start()
    ended = deployment.wait_ended(answered)
    deployment.assert_exactly_once(ended)


def test_a_postgresql_restart_mid_run(deployment: Deployment, pg_cluster) -> None:  # noqa: ANN001
    ids = [_submit(deployment.api(i % 2, i % 3), "tiny-slow", steps=40, seed=7000 + i) for i in range(24)]
    # Work has started (a quiet machine may finish some before a heartbeat records it as current).
    wait_for(lambda: any(deployment.store.get_request(i).started_at is not None for i in ids),
             timeout=120, what="work in progress")
    pg_cluster.restart("fast")
    ended = deployment.wait_ended(ids)
    deployment.assert_exactly_once(ended)
    assert all(p.alive() for p in deployment.apis) and sum(p.alive() for p in deployment.workers) >= 3
    # And every process carries on: new requests through both replicas.
    after = [_submit(deployment.api(i), seed=7100 + i) for i in range(2)]
    deployment.assert_exactly_once(deployment.wait_ended(after))


def test_results_wait_for_a_storage_outage(deployment: Deployment) -> None:
    deployment.s3.stop_gateway()
    try:
        ids = [_submit(deployment.api(i % 2), steps=1, seed=8000 + i) for i in range(6)]  # no S3 at submit
        # The images are made but cannot be stored: the requests stay processing, not failed.
        wait_for(lambda: all(deployment.store.get_request(i).status == Status.PROCESSING for i in ids)
                 and any(w.current for w in deployment.store.list_workers()), timeout=120, what="the runs")
        time.sleep(4)
        assert not any(deployment.store.get_request(i).status.is_terminal for i in ids)
    finally:
        deployment.s3.start_gateway()
    ended = deployment.wait_ended(ids)
    deployment.assert_exactly_once(ended)
    assert all(r.attempts == 1 for r in ended.values())  # kept and retried, not redone


def test_two_machines_serve_events_webhooks_and_the_official_clients(deployment: Deployment, tmp_path: Path) -> None:
    """The replicas share only the database and the bucket: a request submitted to one is
    followed, delivered and downloaded through the other."""
    import io
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import openai
    from blackforest import BFLClient
    from blackforest.types.general.client_config import ClientConfig
    from PIL import Image

    # Live events through replica 1 for a request submitted to replica 0.
    rid = _submit(deployment.api(0), "tiny-slow", steps=30, seed=9001)
    names, done = [], None
    with httpx.stream("GET", f"{deployment.apis[1].url}{BASE}/requests/{rid}/events",
                      headers=deployment.api(1).headers, timeout=300) as resp:
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                names.append(event)
            elif line.startswith("data: ") and event == "done":
                done = json.loads(line[6:])
                break
    assert done is not None and done["status"] == "success" and "progress" in names, names

    # A webhook for a request submitted to replica 1: delivered (by whichever replica's dispatcher), once.
    seen: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        resp = deployment.api(1).post("/requests", {"model": "tiny", "payload": {"prompt": "a blue square"},
                                                     "webhook_url": f"http://127.0.0.1:{httpd.server_address[1]}/h"})
        assert resp.status_code == 200, resp.text
        hooked = resp.json()["request_id"]
        wait_for(lambda: seen, timeout=120, what="the webhook")
        # Settled as delivered at its first attempt (recorded after the receiver answered): no
        # replica's dispatcher will send it again, so the one received is all there will be.
        hooks = wait_for(lambda: (h := deployment.api(0).status(hooked)["webhooks"])
                         and all(x["status"] != "pending" for x in h) and h, timeout=120, what="the webhook to settle")
        assert [(h["status"], h["attempts"]) for h in hooks] == [("delivered", 1)], hooks
        assert len(seen) == 1 and json.loads(seen[0])["request_id"] == hooked
    finally:
        httpd.shutdown()
        httpd.server_close()

    # The official BFL client, synchronously, editing through replica 0 (alias flux-kontext-pro).
    source = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(source)
    bfl = BFLClient(api_key=deployment.keys[0], base_url=deployment.apis[0].url)
    result = bfl.generate("flux-kontext-pro", {"prompt": "make it blue", "input_image": str(source), "seed": 42},
                          ClientConfig(sync=True, polling_interval=0.2, max_retries=900, timeout=240)).result
    assert result["seed"] == 42 and httpx.get(result["sample"], timeout=30).status_code == 200

    # The official OpenAI client through replica 1.
    client = openai.OpenAI(base_url=f"{deployment.apis[1].url}/v1", api_key=deployment.keys[1], max_retries=0,
                           timeout=300)
    image = client.images.generate(model="tiny", prompt="a red circle", size="1024x1024", response_format="url")
    downloaded = httpx.get(image.data[0].url, timeout=30)
    assert downloaded.status_code == 200 and Image.open(io.BytesIO(downloaded.content)).size == (1024, 1024)
