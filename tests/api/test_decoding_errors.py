"""A body that cannot be read is a documented 4xx in the route's own dialect: no body, another
content type, bytes that are not UTF-8, text that is not JSON (NaN, nesting too deep), JSON
that is not an object. Against a real ``darkroom serve`` on loopback (no worker: nothing here
is queued)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from darkroom.testing.api import BASE, start_deployment

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    dep = start_deployment(tmp_path_factory.mktemp("decoding"), tiny_models, worker=False)
    yield dep
    dep.server.stop()


# (what, body, content type, status for request-queue/BFL JSON routes, for OpenAI's)
CASES = [
    ("no body", b"", "application/json", 422, 400),
    ("another content type", b'{"model": "tiny"}', "text/plain", 415, 415),
    ("a form", b"model=tiny", "application/x-www-form-urlencoded", 415, 415),
    ("not UTF-8", b'{"model": "\xff"}', "application/json", 422, 400),
    ("not JSON", b"{", "application/json", 422, 400),
    ("NaN", b'{"prompt": NaN}', "application/json", 422, 400),
    ("nested too deep", DEEP, "application/json", 422, 400),
    ("not an object", b"[1, 2]", "application/json", 422, 400),
]


@pytest.mark.parametrize(("what", "body", "content_type", "status", "openai_status"), CASES,
                         ids=[c[0] for c in CASES])
def test_unreadable_bodies_are_4xx_in_each_dialects_shape(server, what: str, body: bytes, content_type: str,
                                                          status: int, openai_status: int) -> None:
    key = server.a.key
    headers = {"Content-Type": content_type}
    rq = httpx.post(f"{server.server.url}{BASE}/requests", content=body,
                    headers={**headers, "Authorization": f"Bearer {key}"}, timeout=60)
    assert rq.status_code == status, rq.text
    error = rq.json()["error"]
    assert error["code"] == ("unsupported_media_type" if status == 415 else "invalid_field")
    if status == 422:
        assert error["field"] == "body" and error["message"].startswith("body")

    bfl = httpx.post(f"{server.server.url}/v1/tiny", content=body, headers={**headers, "x-key": key}, timeout=60)
    assert bfl.status_code == status, bfl.text
    assert set(bfl.json()) == {"detail", "message"}
    if status == 422:
        assert bfl.json()["detail"][0]["loc"] == ["body"]

    openai = httpx.post(f"{server.server.url}/v1/images/generations", content=body,
                        headers={**headers, "Authorization": f"Bearer {key}"}, timeout=60)
    assert openai.status_code == openai_status, openai.text
    assert set(openai.json()["error"]) == {"message", "type", "param", "code"}
    assert openai.json()["error"]["param"] is None  # the body as a whole, no parameter
    assert openai.headers["x-should-retry"] == "false"


def test_edits_take_multipart_only(server) -> None:
    resp = httpx.post(f"{server.server.url}/v1/images/edits", json={"prompt": "x"},
                      headers={"Authorization": f"Bearer {server.a.key}"}, timeout=60)
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"]["code"] == "unsupported_media_type"


def test_a_number_without_a_fraction_is_an_integer(server) -> None:
    """JSON has one number type: 3.0 is the integer 3, as JSON Schema (and so the OpenAPI
    document) says; 3.5 is not one."""
    url, key = f"{server.server.url}{BASE}/requests", server.a.key
    whole = httpx.post(url, content=b'{"model": "tiny", "payload": {"prompt": "x", "seed": 3.0, "steps": 1e0}}',
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=60)
    assert whole.status_code == 200, whole.text
    stored = server.a.status(whole.json()["request_id"])["payload"]
    assert stored["seed"] == 3 and stored["steps"] == 1
    fraction = httpx.post(url, content=b'{"model": "tiny", "payload": {"prompt": "x", "seed": 3.5}}',
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=60)
    assert fraction.status_code == 422 and fraction.json()["error"]["field"] == "payload.seed"


def test_a_post_to_another_v1_route_is_405_with_every_allowed_method(server) -> None:
    url, key = server.server.url, server.a.key
    for path in ("/v1/models", "/v1/get_result"):
        resp = httpx.post(f"{url}{path}", json={"prompt": "x"}, headers={"x-key": key}, timeout=60)
        assert resp.status_code == 405 and resp.headers["allow"] == "GET", resp.text
    both = httpx.request("OPTIONS", f"{url}{BASE}/requests", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert both.status_code == 405 and both.headers["allow"] == "GET, POST"
