"""The OpenAI Images dialect through the official ``openai`` client, unmodified (base_url only)."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from darkroom.testing.server import Server, create_key, darkroom_env, wait_for

PRIMARY = "/api/v1/ie/requestqueue/apikey"
EXPLICIT = "an explicit photo of a naked woman having sex"  # blocked at safety_tolerance 2 (moderation "auto")
FAST = {"steps": 1}  # darkroom's own payload fields ride in extra_body


@pytest.fixture(scope="module")
def client(deployment) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{deployment.server.url}/v1", api_key=deployment.a.key, max_retries=0,
                         timeout=240)


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _png(size: tuple[int, int], colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_generate_url_with_size_mapping(client: openai.OpenAI, deployment) -> None:
    before = int(time.time())
    result = client.images.generate(model="tiny", prompt="a red circle", size="1536x1024", response_format="url",
                                    extra_body={**FAST, "seed": 11})
    assert before <= result.created <= time.time() + 1
    [item] = result.data
    assert item.b64_json is None and item.revised_prompt == "a red circle"
    assert item.url.startswith(f"{deployment.server.url}/media/")
    download = httpx.get(item.url, timeout=30)
    assert download.headers["content-type"] == "image/png"  # OpenAI's default output_format
    image = _image(download.content)
    assert abs(image.width / image.height - 3 / 2) < 0.02  # 1536x1024 -> 3:2 at about 1 MP
    assert abs(image.width * image.height - 1024 * 1024) <= 0.1 * 1024 * 1024
    assert result.size == f"{image.width}x{image.height}" and result.output_format == "png"


def test_generate_b64_two_images_are_different(client: openai.OpenAI, deployment) -> None:
    result = client.images.generate(model="tiny", prompt="a green star", n=2, response_format="b64_json",
                                    output_format="jpeg", size="1024x1024", quality="high", style="vivid",
                                    user="tester", moderation="auto", extra_body={**FAST, "seed": 7})
    assert len(result.data) == 2 and all(d.url is None for d in result.data)
    images = [_image(base64.b64decode(d.b64_json)) for d in result.data]
    assert all(i.format == "JPEG" and i.size == (1024, 1024) for i in images)
    assert images[0].tobytes() != images[1].tobytes()
    # Two separate requests, seeded 7 and 8, visible through the primary dialect too.
    listed = deployment.a.get("/requests", params={"limit": 2}).json()["requests"]
    assert sorted(r["outcome"]["seed"] for r in listed) == [7, 8]


def test_default_size_and_response_format(client: openai.OpenAI) -> None:
    result = client.images.generate(model="tiny", prompt="a blue square", extra_body=FAST)
    image = _image(base64.b64decode(result.data[0].b64_json))  # b64_json by default, as GPT image models answer
    assert image.size == (1024, 1024) and image.format == "PNG"


def test_edit_through_the_client(client: openai.OpenAI) -> None:
    result = client.images.edit(model="tiny-edit", image=("in.png", _png((64, 48)), "image/png"),
                                prompt="make it blue", response_format="b64_json", extra_body=FAST)
    [item] = result.data
    image = _image(base64.b64decode(item.b64_json))
    assert abs(image.width / image.height - 4 / 3) < 0.02  # size "auto": the input image's shape
    assert item.revised_prompt == "make it blue"


def test_edit_with_two_images(client: openai.OpenAI, deployment) -> None:
    result = client.images.edit(model="tiny-edit", image=[("a.png", _png((64, 64)), "image/png"),
                                                           ("b.png", _png((64, 64), (0, 0, 200)), "image/png")],
                                prompt="put them together", size="1024x1536", response_format="url",
                                extra_body=FAST)
    image = _image(httpx.get(result.data[0].url, timeout=30).content)
    assert abs(image.width / image.height - 2 / 3) < 0.02
    [request] = deployment.a.get("/requests", params={"limit": 1}).json()["requests"]
    assert request["payload"]["input_image_2"].startswith("darkroom-blob:")


def test_errors_raise_the_clients_exception_classes(client: openai.OpenAI, deployment) -> None:
    bad_key = openai.OpenAI(base_url=f"{deployment.server.url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad_key.images.generate(model="tiny", prompt="x")
    assert auth.value.code == "invalid_api_key" and auth.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="dall-e-3", prompt="x")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    cases = [
        ({"n": 5}, "n", "invalid_value"),
        ({"output_format": "webp"}, "output_format", "unsupported_parameter"),
        ({"background": "transparent"}, "background", "unsupported_parameter"),
        ({"size": "huge"}, "size", "invalid_value"),
        ({"extra_body": {"colour": "red"}}, "colour", "unknown_parameter"),
        ({"extra_body": {"steps": 0}}, "steps", "invalid_value"),
        ({"prompt": "x" * 2001}, "prompt", "invalid_value"),
    ]
    for kwargs, param, code in cases:
        kwargs = {"model": "tiny", "prompt": "x", **kwargs}
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.generate(**kwargs)
        assert (bad.value.param, bad.value.code) == (param, code), bad.value.body
    with pytest.raises(openai.BadRequestError) as no_mask:
        client.images.edit(model="tiny-edit", image=("in.png", _png((64, 64)), "image/png"), prompt="x",
                           mask=("mask.png", _png((64, 64)), "image/png"))
    assert no_mask.value.param == "mask"
    with pytest.raises(openai.BadRequestError) as not_editing:
        client.images.edit(model="tiny", image=("in.png", _png((64, 64)), "image/png"), prompt="x")
    assert not_editing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as not_an_image:
        client.images.edit(model="tiny-edit", image=("in.png", b"not an image", "image/png"), prompt="x")
    assert not_an_image.value.param == "image"


def test_moderation_is_a_content_policy_violation(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as blocked:
        client.images.generate(model="tiny", prompt=EXPLICIT)
    assert blocked.value.code == "content_policy_violation"
    assert blocked.value.response.headers["x-should-retry"] == "false"


def test_models_list_and_primary_error_shape_unchanged(client: openai.OpenAI, deployment) -> None:
    assert {m.id for m in client.models.list()} >= {"tiny", "tiny-edit", "tiny-slow"}
    primary = deployment.a.get("/models/dall-e-3")
    assert primary.status_code == 404
    assert primary.json() == {"error": {"code": "model_not_found", "message": primary.json()["error"]["message"],
                                        "field": "model"}}


# -- waiting: the call gives up, or its client does, and the queued work is cancelled ----------------


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    """A server without a worker: requests stay queued; sync calls give up after 3 s."""
    root = tmp_path_factory.mktemp("openai-idle")
    env = darkroom_env(root / "data", tiny_models, DARKROOM_SYNC_WAIT_S="3")
    key = create_key(env, "alice")
    server = Server(env, root / "serve.log", worker=False).start()
    yield server, key
    server.stop()


def _statuses(url: str, key: str) -> list[str]:
    listed = httpx.get(f"{url}{PRIMARY}/requests", params={"limit": 100}, headers={"Authorization": f"Bearer {key}"},
                       timeout=30).json()
    return [r["status"] for r in listed["requests"]]


def test_timeout_is_504_and_cancels(idle) -> None:
    url, key = idle[0].url, idle[1]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=60)  # default retries: must not retry
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as timed_out:
        client.images.generate(model="tiny", prompt="never drawn", n=2)
    assert timed_out.value.status_code == 504 and timed_out.value.code == "timeout"
    assert time.monotonic() - started < 20
    assert _statuses(url, key)[:2] == ["cancelled", "cancelled"]


def test_client_going_away_cancels(idle) -> None:
    url, key = idle[0].url, idle[1]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/images/generations", json={"model": "tiny", "prompt": "abandoned"},
                   headers={"Authorization": f"Bearer {key}"}, timeout=0.5)
    wait_for(lambda: _statuses(url, key)[0] == "cancelled", timeout=10, what="the abandoned request to be cancelled")
    assert "client went away" in idle[0].log_tail(200)  # noticed by the wait loop, not the 3 s limit
