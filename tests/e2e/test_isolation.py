"""A key sees and touches only its own requests; result URLs need a valid signature."""

from __future__ import annotations

import httpx


def test_other_keys_requests_are_invisible(deployment) -> None:
    a, b = deployment.a, deployment.b
    mine = a.submit(prompt="alice's circle")["request_id"]
    theirs = b.submit(prompt="bob's square")["request_id"]
    for resp in (b.get(f"/requests/{mine}"), b.post(f"/requests/{mine}/cancel")):
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "request_not_found"
    listed = a.get("/requests", params={"limit": 100}).json()
    ids = {r["request_id"] for r in listed["requests"]}
    assert mine in ids and theirs not in ids
    b_ids = {r["request_id"] for r in b.get("/requests", params={"limit": 100}).json()["requests"]}
    assert theirs in b_ids and mine not in b_ids
    a.wait(mine)
    b.wait(theirs)


def test_list_filters_and_paging(deployment) -> None:
    a = deployment.a
    ids = [a.submit(prompt=f"circle {i}")["request_id"] for i in range(3)]
    for i in ids:
        a.wait(i)
    page = a.get("/requests", params={"model_id": "tiny", "limit": 2}).json()
    assert len(page["requests"]) == 2 and page["total"] >= 3
    assert page["requests"][0]["request_id"] == ids[-1]  # newest first
    done = a.get("/requests", params={"status": "success", "limit": 100}).json()
    assert all(r["status"] == "success" for r in done["requests"])
    none = a.get("/requests", params={"status": "processing", "model_id": "tiny-edit"}).json()
    assert none == {"requests": [], "total": 0, "limit": 50, "offset": 0}


def test_result_urls_need_a_valid_signature(deployment) -> None:
    a = deployment.a
    final = a.wait(a.submit()["request_id"])
    url = final["outcome"]["media_urls"][0]["url"]
    assert httpx.get(url).status_code == 200
    base, _, query = url.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    tampered_sig = params["sig"][:-1] + ("0" if params["sig"][-1] != "0" else "1")
    for bad in (base, f"{base}?exp={params['exp']}&sig={tampered_sig}",
                f"{base}?exp={int(params['exp']) + 1}&sig={params['sig']}", f"{base}?exp=1&sig={params['sig']}"):
        resp = httpx.get(bad)
        assert resp.status_code == 403, bad
        assert resp.json()["error"]["code"] == "invalid_signature"


def test_models_endpoints(deployment) -> None:
    a = deployment.a
    listing = a.get("/models").json()
    assert listing["model_ids"][0] == "tiny"
    assert set(listing["model_ids"]) == {"tiny", "tiny-edit", "tiny-full", "tiny-slow"}
    info = a.get("/models/tiny-edit").json()
    assert info["model"] == "tiny-edit" and info["model_type"] == "image-editing"
    assert info["host_type"] in ("", "internal", "external")
    names = {p["name"] for p in info["parameters"]}
    assert {"prompt", "aspect_ratio", "seed", "steps", "guidance", "input_image"} <= names
    steps = next(p for p in info["parameters"] if p["name"] == "steps")
    assert steps["default"] == 2 and steps["constraints"]["maximum"] == 50
    assert info["qworkers"] >= 1
    assert a.get("/models/nope").status_code == 404


def test_sdk_base_path_alias_and_openapi(deployment) -> None:
    a = deployment.a
    resp = httpx.get(f"{a.url}/api/v1/ie/requestqueue/models", headers=a.headers)
    assert resp.status_code == 200 and "tiny" in resp.json()["model_ids"]
    schema = httpx.get(f"{a.url}/openapi.json").json()
    paths = schema["paths"]
    base = "/api/v1/ie/requestqueue/apikey"
    assert {f"{base}/requests", f"{base}/requests/{{request_id}}", f"{base}/requests/{{request_id}}/cancel",
            f"{base}/models", f"{base}/models/{{model_id}}"} <= set(paths)
    submit = paths[f"{base}/requests"]["post"]
    assert {"200", "401", "404", "413", "422"} <= set(submit["responses"])
    payload_tiny = schema["components"]["schemas"]["Payload_tiny"]
    assert payload_tiny["properties"]["seed"]["maximum"] == 2147483647
    assert "input_image" in schema["components"]["schemas"]["Payload_tiny_edit"]["properties"]
