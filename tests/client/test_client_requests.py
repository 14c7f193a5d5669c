"""Request building and answer parsing, through both clients."""

from __future__ import annotations

import json

import httpx
import pytest

from darkroom.client import (
    Client,
    DarkroomError,
    Progress,
    RequestFailed,
    RequestStatus,
    Status,
)


def test_submit_posts_model_and_payload_with_bearer_auth(make_client, server, fx):
    fields = ("request_id", "model", "status", "created_at", "updated_at", "queued_at")
    submitted = {k: fx.status_json()[k] for k in fields}
    server.on("POST", "/requests", fx.ok(submitted))
    client = make_client(server)

    result = client.submit(
        "darkroom-mini",
        prompt="a fox",
        aspect_ratio="16:9",
        seed=1,
        output_format="png",
        guidance=None,
    )

    (request,) = server.requests
    assert request.method == "POST"
    assert str(request.url) == fx.API_ROOT + "/requests"
    assert request.headers["authorization"] == "Bearer " + fx.API_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("darkroom-python/")
    assert json.loads(request.content) == {
        "model": "darkroom-mini",
        "payload": {
            "prompt": "a fox",
            "aspect_ratio": "16:9",
            "seed": 1,
            "output_format": "png",
            "guidance": None,
        },
    }
    assert result.request_id == fx.REQUEST_ID
    assert result.status is Status.QUEUED
    assert result.outcome is None and result.org_id is None


def test_submit_without_prompt_sends_the_payload_as_given(make_client, server, fx):
    server.on("POST", "/requests", fx.ok(fx.status_json()))
    make_client(server).submit("edit-model", input_image="https://x/img.png")
    assert json.loads(server.requests[0].content)["payload"] == {"input_image": "https://x/img.png"}


def test_get_parses_the_whole_status_object(make_client, server, fx):
    body = fx.status_json("processing", progress={"step": 3, "total": 12}, extra_field="kept")
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(body))

    status = make_client(server).get(fx.REQUEST_ID)

    (request,) = server.requests
    assert request.method == "GET"
    assert str(request.url) == f"{fx.API_ROOT}/requests/{fx.REQUEST_ID}"
    assert request.headers["authorization"] == "Bearer " + fx.API_KEY
    assert status == RequestStatus(
        request_id=fx.REQUEST_ID,
        model="darkroom-mini",
        status=Status.PROCESSING,
        created_at=1_700_000_000,
        updated_at=1_700_000_001,
        queued_at=1_700_000_000,
        org_id="org_1",
        is_public=False,
        payload={"prompt": "a fox"},
        outcome=None,
        progress=Progress(3, 12),
        queue_position=None,
    )
    assert status.raw["extra_field"] == "kept"
    assert status.progress.fraction == 0.25
    assert not status.done and not status.succeeded
    assert status.urls == () and status.error_code is None
    assert hash(status) == hash(RequestStatus.from_json(body))


def test_success_status_helpers(make_client, server, fx):
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(fx.status_json("success")))
    status = make_client(server).get(fx.REQUEST_ID)
    assert status.done and status.succeeded
    assert status.urls == (
        fx.BASE_URL + "/files/a.png?sig=abc",
        fx.BASE_URL + "/files/b.png?sig=def",
    )
    assert status.outcome["seed"] == 42
    assert status.error_code is None


def test_failed_status_helpers(make_client, server, fx):
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(fx.status_json("failed")))
    status = make_client(server).get(fx.REQUEST_ID)
    assert status.done and not status.succeeded
    assert (status.error_code, status.error_message) == ("engine_error", "it broke")


def test_get_quotes_the_id_and_accepts_a_status(make_client, server, fx):
    server.on("GET", "/requests/a%2F..%2Fb", fx.ok(fx.status_json()))
    server.on("GET", f"/requests/{fx.REQUEST_ID}", fx.ok(fx.status_json()))
    client = make_client(server)
    client.get("a/../b")
    client.get(RequestStatus.from_json(fx.status_json()))
    assert server.requests[0].url.raw_path == b"/api/v1/ie/requestqueue/apikey/requests/a%2F..%2Fb"
    assert server.requests[1].url.path.endswith(fx.REQUEST_ID)


def test_list_sends_filters_and_parses_the_page(make_client, server, fx):
    server.on("GET", "/requests", fx.ok({"requests": [fx.status_json("success")] * 2, "total": 5}))
    page = make_client(server).list(model="darkroom-mini", status="success", limit=2, offset=2)

    params = dict(server.requests[0].url.params)
    assert params == {"model_id": "darkroom-mini", "status": "success", "limit": "2", "offset": "2"}
    assert page.total == 5 and len(page) == 2 and page.has_more and page.next_offset == 4
    assert all(r.status is Status.SUCCESS for r in page)


def test_list_defaults_and_status_enum(make_client, server, fx):
    server.on("GET", "/requests", fx.ok({"requests": [], "total": 0}))
    client = make_client(server)
    page = client.list()
    client.list(status=Status.QUEUED)
    assert dict(server.requests[0].url.params) == {"limit": "50", "offset": "0"}
    assert server.requests[1].url.params["status"] == "queued"
    assert not page.has_more


def test_list_rejects_an_unknown_status_word_before_sending(make_client, server):
    with pytest.raises(ValueError):
        make_client(server).list(status="done")
    assert server.requests == []


def test_cancel_posts_to_the_cancel_route(make_client, server, fx):
    server.on("POST", f"/requests/{fx.REQUEST_ID}/cancel", fx.ok(fx.status_json("cancelled")))
    status = make_client(server).cancel(fx.REQUEST_ID)
    assert server.requests[0].method == "POST"
    assert status.status is Status.CANCELLED and status.error_code == "cancelled"


def test_models_and_model(make_client, server, fx):
    record = {"model": "darkroom-mini", "model_type": "text-to-image", "parameters": []}
    server.on("GET", "/models", fx.ok({"model_ids": ["darkroom-mini"], "models": [record]}))
    server.on("GET", "/models/darkroom-mini", fx.ok(record))
    client = make_client(server)
    assert client.models() == [record]
    assert client.model("darkroom-mini") == record
    assert [str(r.url) for r in server.requests] == [
        fx.API_ROOT + "/models",
        fx.API_ROOT + "/models/darkroom-mini",
    ]


def test_models_falls_back_to_model_ids(make_client, server, fx):
    server.on("GET", "/models", fx.ok({"model_ids": ["a", "b"]}))
    assert make_client(server).models() == [{"model": "a"}, {"model": "b"}]


def test_download_fetches_the_signed_url_without_the_api_key(make_client, server, fx):
    server.on("GET", "/files/b.png", httpx.Response(200, content=b"PNG2"))
    status = RequestStatus.from_json(fx.status_json("success"))
    client = make_client(server)

    assert client.download(status, index=1) == b"PNG2"
    (request,) = server.requests
    assert str(request.url) == fx.BASE_URL + "/files/b.png?sig=def"
    assert "authorization" not in request.headers


def test_download_accepts_absolute_and_relative_urls(make_client, server, fx):
    server.on("GET", "/files/x.jpg", httpx.Response(200, content=b"JPG"))
    client = make_client(server)
    assert client.download("http://cdn.test/files/x.jpg?sig=1") == b"JPG"
    assert client.download("/files/x.jpg?sig=1") == b"JPG"
    assert str(server.requests[0].url) == "http://cdn.test/files/x.jpg?sig=1"
    assert str(server.requests[1].url) == fx.BASE_URL + "/files/x.jpg?sig=1"


def test_download_refuses_what_has_no_image(make_client, server, fx):
    client = make_client(server)
    with pytest.raises(RequestFailed) as info:
        client.download(RequestStatus.from_json(fx.status_json("failed")))
    assert info.value.code == "engine_error"
    with pytest.raises(ValueError, match="wait"):
        client.download(RequestStatus.from_json(fx.status_json("processing")))
    with pytest.raises(IndexError):
        client.download(RequestStatus.from_json(fx.status_json("success")), index=2)
    assert server.requests == []


@pytest.mark.parametrize(
    "base_url",
    [
        "http://darkroom.test",
        "http://darkroom.test/",
        "http://darkroom.test/api/v1/ie/requestqueue/apikey",
    ],
)
def test_base_url_forms(make_client, server, fx, base_url):
    server.on("GET", "/models", fx.ok({"model_ids": []}))
    make_client(server, base_url=base_url).models()
    assert str(server.requests[0].url) == fx.API_ROOT + "/models"


def test_base_url_with_a_path_prefix_and_the_short_api_path(make_client, server, fx):
    server.on("GET", "/models", fx.ok({"model_ids": []}))
    make_client(server, base_url="http://h.test/darkroom").models()
    make_client(server, base_url="http://h.test/api/v1/ie/requestqueue").models()
    assert str(server.requests[0].url) == "http://h.test/darkroom/api/v1/ie/requestqueue/apikey/models"
    assert str(server.requests[1].url) == "http://h.test/api/v1/ie/requestqueue/models"


@pytest.mark.parametrize("base_url", ["darkroom.test", "ftp://darkroom.test", "/relative"])
def test_base_url_must_be_absolute_http(base_url):
    with pytest.raises(ValueError):
        Client(base_url, api_key="k")


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "x", "status": "created"},  # a word darkroom never sends
        {"status": "queued"},
        ["not", "an", "object"],
    ],
)
def test_malformed_status_objects_raise_invalid_response(make_client, server, fx, body):
    server.on("GET", "/requests/x", fx.ok(body))
    with pytest.raises(DarkroomError) as info:
        make_client(server).get("x")
    assert info.value.code == "invalid_response"


def test_a_success_that_is_not_json_raises_invalid_response(make_client, server):
    server.on("GET", "/requests/x", httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(DarkroomError) as info:
        make_client(server).get("x")
    assert info.value.code == "invalid_response" and info.value.status_code == 200
