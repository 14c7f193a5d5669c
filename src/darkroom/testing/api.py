"""An HTTP client per API key and a two-key deployment, shared by the end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from darkroom.testing.server import Server, create_key, darkroom_env, wait_for

BASE = "/api/v1/ie/requestqueue/apikey"


@dataclass
class Api:
    """A thin HTTP client for one key, so tests read like the contract."""

    url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{BASE}{path}", json=json, headers={**self.headers, **(headers or {})},
                          timeout=30, **kw)

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{BASE}{path}", headers={**self.headers, **(headers or {})}, timeout=30, **kw)

    def submit(self, model: str = "tiny", **payload: Any) -> dict:
        payload.setdefault("prompt", "a red circle")
        resp = self.post("/requests", {"model": model, "payload": payload})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def status(self, request_id: str) -> dict:
        resp = self.get(f"/requests/{request_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait(self, request_id: str, *, until: tuple[str, ...] = ("success", "failed", "cancelled"),
             timeout: float = 180) -> dict:
        return wait_for(lambda: (s := self.status(request_id))["status"] in until and s,
                        timeout=timeout, what=f"{request_id} to reach {until}")


@dataclass
class Deployment:
    """A running server with two keys, ``a`` (alice) and ``b`` (bob)."""

    server: Server
    env: dict[str, str]
    data_dir: Path
    a: Api
    b: Api

    def restart(self, log: Path) -> None:
        """Stop the server and start it again on the same data, with or without its worker as before."""
        self.server.stop()
        self.server = Server(self.env, log, worker="--no-worker" not in self.server.args).start()
        self.a, self.b = Api(self.server.url, self.a.key), Api(self.server.url, self.b.key)


def start_deployment(tmp_path: Path, tiny_models: Path, *, worker: bool = True, **env: str) -> Deployment:
    data_dir = tmp_path / "data"
    environ = darkroom_env(data_dir, tiny_models, **env)
    key_a = create_key(environ, "alice")
    key_b = create_key(environ, "bob")
    server = Server(environ, tmp_path / "serve.log", worker=worker).start()
    return Deployment(server, environ, data_dir, Api(server.url, key_a), Api(server.url, key_b))
