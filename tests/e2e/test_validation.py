"""Every payload rule: the right 4xx, a stable code, the field named, and nothing stored."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from darkroom.store import Store

GOOD = {"prompt": "a red circle"}

CASES = [
    # (payload changes, model, status, code, field)
    ({"prompt": None}, "tiny", 422, "invalid_field", "payload.prompt"),
    ({"prompt": ""}, "tiny", 422, "invalid_field", "payload.prompt"),
    ({"prompt": "   "}, "tiny", 422, "invalid_field", "payload.prompt"),
    ({"prompt": "x" * 2001}, "tiny", 422, "invalid_field", "payload.prompt"),
    ({"prompt": 5}, "tiny", 422, "invalid_field", "payload.prompt"),
    ({"aspect_ratio": "2:1:1"}, "tiny", 422, "invalid_field", "payload.aspect_ratio"),
    ({"aspect_ratio": "1:3"}, "tiny", 422, "invalid_field", "payload.aspect_ratio"),
    ({"aspect_ratio": "5:2"}, "tiny", 422, "invalid_field", "payload.aspect_ratio"),
    ({"aspect_ratio": "0:1"}, "tiny", 422, "invalid_field", "payload.aspect_ratio"),
    ({"aspect_ratio": 1.5}, "tiny", 422, "invalid_field", "payload.aspect_ratio"),
    ({"seed": -1}, "tiny", 422, "invalid_field", "payload.seed"),
    ({"seed": 2147483648}, "tiny", 422, "invalid_field", "payload.seed"),
    ({"seed": 1.5}, "tiny", 422, "invalid_field", "payload.seed"),
    ({"seed": "7"}, "tiny", 422, "invalid_field", "payload.seed"),
    ({"seed": True}, "tiny", 422, "invalid_field", "payload.seed"),
    ({"prompt_upsampling": "yes"}, "tiny", 422, "invalid_field", "payload.prompt_upsampling"),
    ({"safety_tolerance": 7}, "tiny", 422, "invalid_field", "payload.safety_tolerance"),
    ({"safety_tolerance": -1}, "tiny", 422, "invalid_field", "payload.safety_tolerance"),
    ({"output_format": "gif"}, "tiny", 422, "invalid_field", "payload.output_format"),
    ({"steps": 0}, "tiny", 422, "invalid_field", "payload.steps"),
    ({"steps": 51}, "tiny", 422, "invalid_field", "payload.steps"),
    ({"guidance": -1}, "tiny", 422, "invalid_field", "payload.guidance"),
    ({"guidance": "high"}, "tiny", 422, "invalid_field", "payload.guidance"),
    ({"colour": "red"}, "tiny", 422, "invalid_field", "payload.colour"),
    ({"input_image": "aGVsbG8="}, "tiny", 422, "invalid_field", "payload.input_image"),  # t2i model: no such field
    ({"input_image": "not base64!!"}, "tiny-edit", 422, "invalid_input_image", "payload.input_image"),
    ({"input_image": base64.b64encode(b"hello, not an image").decode()}, "tiny-edit", 422, "invalid_input_image",
     "payload.input_image"),
    ({}, "no-such-model", 404, "model_not_found", "model"),
]


def _stored(deployment) -> int:
    store = Store(f"sqlite:///{deployment.data_dir / 'darkroom.db'}")
    try:
        return store.count_requests()
    finally:
        store.close()


@pytest.mark.parametrize(("change", "model", "status", "code", "field"), CASES,
                         ids=[f"{c[4]}-{i}" for i, c in enumerate(CASES)])
def test_bad_payload_is_rejected_and_stores_nothing(deployment, change, model, status, code, field) -> None:
    before = _stored(deployment)
    payload = {k: v for k, v in {**GOOD, **change}.items()}
    resp = deployment.a.post("/requests", {"model": model, "payload": payload})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert field in error["message"]
    assert _stored(deployment) == before


@pytest.mark.parametrize("body", [{"payload": GOOD}, {"model": "tiny"}, {"model": "tiny", "payload": GOOD, "x": 1},
                                  {"model": 3, "payload": GOOD}, {"model": "tiny", "payload": "text"}])
def test_bad_body_shape(deployment, body) -> None:
    before = _stored(deployment)
    resp = deployment.a.post("/requests", body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_field"
    assert resp.json()["error"]["field"]
    assert _stored(deployment) == before


def test_invalid_json_body(deployment) -> None:
    before = _stored(deployment)
    resp = httpx.post(f"{deployment.server.url}/api/v1/ie/requestqueue/apikey/requests", content=b"{not json",
                      headers={**deployment.a.headers, "content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "body"
    assert _stored(deployment) == before


def test_body_too_large(deployment) -> None:
    before = _stored(deployment)
    huge = "A" * (31 * 1024 * 1024)
    resp = deployment.a.post("/requests", {"model": "tiny-edit", "payload": {**GOOD, "input_image": huge}})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert _stored(deployment) == before


def test_missing_and_bad_key(deployment) -> None:
    url = f"{deployment.server.url}/api/v1/ie/requestqueue/apikey/requests"
    before = _stored(deployment)
    for headers in ({}, {"Authorization": "Bearer dr_nope"}, {"Authorization": "Basic abc"}):
        resp = httpx.post(url, json={"model": "tiny", "payload": GOOD}, headers=headers)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"
    assert _stored(deployment) == before


def test_unknown_request_and_bad_list_query(deployment) -> None:
    resp = deployment.a.get("/requests/00000000-0000-0000-0000-000000000000")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "request_not_found"
    resp = deployment.a.get("/requests", params={"status": "done"})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "status"
    resp = deployment.a.get("/requests", params={"limit": 0})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "limit"
    resp = deployment.a.get("/requests", params={"model_id": "nope"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_defaults_are_filled_in(deployment) -> None:
    submitted = deployment.a.submit(prompt="a ring")
    payload = deployment.a.status(submitted["request_id"])["payload"]
    assert payload == {"prompt": "a ring", "aspect_ratio": "1:1", "seed": 0, "prompt_upsampling": False,
                       "safety_tolerance": 2, "output_format": "jpeg", "guidance": 3.5, "steps": 2}


def test_an_edit_gets_the_models_edit_default(deployment) -> None:
    """tiny-edit's registry entry gives guidance a separate default for edits (edit_default 1.5)."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    edit = deployment.a.submit("tiny-edit", prompt="make it blue", input_image=image)
    t2i = deployment.a.submit("tiny-edit", prompt="a ring")
    explicit = deployment.a.submit("tiny-edit", prompt="make it blue", input_image=image, guidance=4.0)
    assert deployment.a.status(edit["request_id"])["payload"]["guidance"] == 1.5
    assert deployment.a.status(t2i["request_id"])["payload"]["guidance"] == 3.5
    assert deployment.a.status(explicit["request_id"])["payload"]["guidance"] == 4.0
    guidance = next(p for p in deployment.a.get("/models/tiny-edit").json()["parameters"] if p["name"] == "guidance")
    assert guidance["default"] == 3.5 and guidance["edit_default"] == 1.5
