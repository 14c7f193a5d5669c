"""Submit -> poll -> download through a real server, for every listed aspect ratio and format."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from darkroom.imaging import size_for_aspect

RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:7", "7:3"]


@pytest.mark.parametrize("output_format", ["jpeg", "png"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_generate_each_ratio_and_format(deployment, ratio: str, output_format: str) -> None:
    api = deployment.a
    submitted = api.submit(prompt="a blue square", aspect_ratio=ratio, output_format=output_format, seed=7)
    assert submitted["status"] == "queued"
    assert set(submitted) >= {"request_id", "model", "status", "created_at", "updated_at", "queued_at"}
    final = api.wait(submitted["request_id"])
    assert final["status"] == "success", final
    outcome = final["outcome"]
    url = outcome["media_urls"][0]["url"]
    assert url.startswith(deployment.server.url + "/media/")
    resp = httpx.get(url, timeout=30)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == f"image/{output_format}"
    image = Image.open(io.BytesIO(resp.content))
    assert image.format == {"jpeg": "JPEG", "png": "PNG"}[output_format]
    w, h = (int(x) for x in ratio.split(":"))
    assert image.size == size_for_aspect(w, h) == (outcome["width"], outcome["height"])
    assert abs(image.width * image.height - 1024 * 1024) <= 0.1 * 1024 * 1024
    assert abs((image.width / image.height) / (w / h) - 1) <= 0.02
    assert image.width % 16 == 0 and image.height % 16 == 0
    assert outcome["seed"] == 7
    assert set(outcome["timings"]) >= {"queued_ms", "engine_ms", "encode_store_ms", "total_ms"}


def test_null_aspect_ratio_is_square(deployment) -> None:
    final = deployment.a.wait(deployment.a.submit(aspect_ratio=None)["request_id"])
    assert (final["outcome"]["width"], final["outcome"]["height"]) == (1024, 1024)


def _pixels(url: str) -> bytes:
    return Image.open(io.BytesIO(httpx.get(url, timeout=30).content)).convert("RGB").tobytes()


def test_same_seed_same_pixels(deployment) -> None:
    api = deployment.a
    # One at a time: each runs alone. (Two of them could share a batch, whose ±1 rounding the
    # tiny model's upscaler can magnify: docs/models.md, max_batch.)
    first, second, third = (api.wait(api.submit(prompt="a green star", seed=seed, output_format="png")["request_id"])
                            for seed in (1234, 1234, 1235))
    assert _pixels(first["outcome"]["media_urls"][0]["url"]) == _pixels(second["outcome"]["media_urls"][0]["url"])
    assert _pixels(first["outcome"]["media_urls"][0]["url"]) != _pixels(third["outcome"]["media_urls"][0]["url"])


def test_seed_zero_draws_a_random_seed(deployment) -> None:
    api = deployment.a
    first, second = (api.wait(api.submit(seed=0)["request_id"]) for _ in range(2))
    seeds = {first["outcome"]["seed"], second["outcome"]["seed"]}
    assert len(seeds) == 2
    assert all(1 <= s <= 2147483647 for s in seeds)
    assert first["payload"]["seed"] == 0


def test_edit_with_input_image(deployment) -> None:
    import base64

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    api = deployment.a
    final = api.wait(api.submit("tiny-edit", prompt="make it blue",
                                input_image=base64.b64encode(buf.getvalue()).decode())["request_id"])
    assert final["status"] == "success", final
    assert final["payload"]["input_image"].startswith("darkroom-blob:")
