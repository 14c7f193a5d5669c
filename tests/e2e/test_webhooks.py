"""Webhooks end to end: a real ``darkroom serve`` posting to a receiver on 127.0.0.1.

The servers here allow-list loopback only (``DARKROOM_URL_ALLOWLIST=127.0.0.0/8``) and
retry fast. No traffic leaves loopback: the refused URLs are refused before any connection.
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from darkroom.testing.api import Api, Deployment, start_deployment
from darkroom.testing.server import run_cli, wait_for
from darkroom.webhooks import generate_secret

WEBHOOK_ENV = {
    "DARKROOM_URL_ALLOWLIST": "127.0.0.0/8",
    "DARKROOM_WEBHOOK_RETRY_BASE_S": "0.5",
    "DARKROOM_WEBHOOK_MAX_ATTEMPTS": "6",
    "DARKROOM_WEBHOOK_POLL_INTERVAL_S": "0.1",
}


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A webhook receiver in a thread: answers ``script`` in turn, then ``then``."""

    url: str
    script: list[int] = field(default_factory=list)
    then: int = 200
    seen: list[Received] = field(default_factory=list)

    def answer(self) -> int:
        return self.script.pop(0) if self.script else self.then


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            rec = state["r"]
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            code = rec.answer()
            rec.seen.append(Received(time.time(), {k.lower(): v for k, v in self.headers.items()}, body, code))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(f"http://127.0.0.1:{httpd.server_address[1]}/hook")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state["r"]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def hook_deployment(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Deployment]:
    """A server with a worker, loopback allow-listed and fast webhook retries."""
    dep = start_deployment(tmp_path_factory.mktemp("hooks"), tiny_models, **WEBHOOK_ENV)
    yield dep
    dep.server.stop()


def submit_with_hook(api: Api, hook: str, secret: str | None = None, model: str = "tiny", **payload: Any) -> str:
    body: dict[str, Any] = {"model": model, "payload": {"prompt": "a red circle", **payload}, "webhook_url": hook}
    if secret is not None:
        body["webhook_secret"] = secret
    resp = api.post("/requests", body)
    assert resp.status_code == 200, resp.text
    return resp.json()["request_id"]


def settled_webhooks(api: Api, rid: str, timeout: float = 60) -> list[dict]:
    return wait_for(lambda: (hooks := api.status(rid)["webhooks"]) and all(h["status"] != "pending" for h in hooks)
                    and hooks, timeout=timeout, what=f"the webhooks of {rid} to settle")


def verify(secret: str, received: Received) -> bool:
    """The receiver's check, written from the Standard Webhooks spec (as in tests/webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    content = f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode() + received.body
    expected = "v1," + base64.b64encode(hmac.digest(key, content, "sha256")).decode()
    return any(hmac.compare_digest(sig, expected) for sig in received.headers["webhook-signature"].split(" "))


def test_terminal_event_is_delivered_once_and_signed(hook_deployment: Deployment, receiver: Receiver) -> None:
    api = hook_deployment.a
    secret = generate_secret()
    rid = submit_with_hook(api, receiver.url, secret, seed=3)
    final = api.wait(rid)
    assert final["status"] == "success"
    [hook] = settled_webhooks(api, rid)
    # One delivery, delivered at its first attempt (recorded after the receiver answered), is all
    # the server will ever send for this request: the terminal event only, not queued or processing.
    assert (hook["status"], hook["attempts"]) == ("delivered", 1), hook
    [got] = receiver.seen
    assert verify(secret, got)
    assert got.headers["webhook-id"] == hook["id"]
    assert got.headers["content-type"] == "application/json"
    body = json.loads(got.body)
    assert body["request_id"] == rid and body["status"] == "success"
    assert {k: body[k] for k in ("model", "payload", "created_at")} == {k: final[k] for k in ("model", "payload",
                                                                                           "created_at")}
    assert "webhooks" not in body
    image = httpx.get(body["outcome"]["media_urls"][0]["url"], timeout=30)  # an absolute, signed link
    assert image.status_code == 200 and image.content
    assert hook == {"id": hook["id"], "event": "success", "status": "delivered", "attempts": 1, "last_error": None,
                    "last_status_code": 200, "delivered_at": hook["delivered_at"], "next_attempt_at": None}
    assert abs(hook["delivered_at"] - time.time()) < 120


def test_retried_until_the_receiver_accepts(hook_deployment: Deployment, receiver: Receiver) -> None:
    receiver.script = [500, 500]
    api = hook_deployment.a
    rid = submit_with_hook(api, receiver.url, model="tiny-slow", steps=2000)  # no secret: the server's
    resp = api.post(f"/requests/{rid}/cancel")
    assert resp.status_code == 200
    [hook] = settled_webhooks(api, rid)
    assert (hook["event"], hook["status"], hook["attempts"], hook["last_status_code"]) == (
        "cancelled", "delivered", 3, 200)
    assert [r.answered for r in receiver.seen] == [500, 500, 200]
    assert {r.headers["webhook-id"] for r in receiver.seen} == {hook["id"]}
    server_secret = (hook_deployment.data_dir / "webhook.key").read_text().strip()
    assert all(verify(server_secret, r) for r in receiver.seen)
    assert receiver.seen[1].at - receiver.seen[0].at >= 0.4  # backoff, not a hot loop
    assert json.loads(receiver.seen[-1].body)["status"] == "cancelled"


def test_cli_prints_the_server_secret(hook_deployment: Deployment) -> None:
    secret = run_cli(["webhook-secret"], hook_deployment.env).strip()
    assert secret.startswith("whsec_")
    assert secret == (hook_deployment.data_dir / "webhook.key").read_text().strip()


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8080/hook",  # loopback, but only 127.0.0.0/8 is allow-listed
    "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/",
    "ftp://127.0.0.1/hook",
])
def test_refused_webhook_urls_store_nothing(hook_deployment: Deployment, url: str) -> None:
    api = hook_deployment.b
    before = api.get("/requests").json()["total"]
    resp = api.post("/requests", {"model": "tiny", "payload": {"prompt": "x"}, "webhook_url": url})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["field"]) == ("url_not_allowed", "webhook_url")
    assert api.get("/requests").json()["total"] == before


def test_pending_delivery_survives_a_restart(tmp_path: Path, tiny_models: Path, receiver: Receiver) -> None:
    """Stop ``darkroom serve`` while a delivery waits for its retry; the next server sends it."""
    dep = start_deployment(tmp_path, tiny_models, worker=False,
                           **{**WEBHOOK_ENV, "DARKROOM_WEBHOOK_RETRY_BASE_S": "1"})
    try:
        receiver.then = 500
        rid = submit_with_hook(dep.a, receiver.url)
        assert dep.a.post(f"/requests/{rid}/cancel").json()["status"] == "cancelled"  # no worker needed
        wait_for(lambda: receiver.seen, timeout=30, what="the first attempt")
        dep.server.stop()
        stopped_at = time.time()
        failed_attempts = len(receiver.seen)
        receiver.then = 200
        dep.restart(tmp_path / "serve-2.log")
        [hook] = settled_webhooks(dep.a, rid)
    finally:
        dep.server.stop()
    assert hook["status"] == "delivered" and hook["attempts"] == failed_attempts + 1
    assert [r.answered for r in receiver.seen] == [500] * failed_attempts + [200]
    assert receiver.seen[-1].at > stopped_at  # sent by the new server
    assert {r.headers["webhook-id"] for r in receiver.seen} == {hook["id"]}
