"""Every pipeline family end to end: a real ``darkroom serve`` on loopback with one tiny
random-weight model per family (``tiny_family_models``), requests through the HTTP API.

Model info states each family's real parameters; a text-to-image and an edit request per family
make images; requests a family cannot take get a 422 naming the field."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from darkroom.engines.families import FAMILIES, input_image_fields
from darkroom.testing.api import start_deployment
from darkroom.testing.tiny_families import FAMILIES as BUILT


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory, tiny_family_models: Path):
    dep = start_deployment(tmp_path_factory.mktemp("families"), tiny_family_models)
    yield dep
    dep.server.stop()


def png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def image_of(final: dict) -> Image.Image:
    assert final["status"] == "success", final.get("outcome")
    resp = httpx.get(final["outcome"]["media_urls"][0]["url"], timeout=30)
    assert resp.status_code == 200
    return Image.open(io.BytesIO(resp.content))


@pytest.mark.parametrize("family", BUILT)
def test_model_info_states_the_familys_parameters(families, family):
    fam = FAMILIES[family]
    resp = families.a.get(f"/models/fam-{family}")
    assert resp.status_code == 200, resp.text
    record = resp.json()
    assert record["license"] == "apache-2.0" and record["pipeline"] == family
    assert record["model_type"] == fam.model_type
    assert record["max_input_images"] == fam.max_input_images
    params = {p["name"]: p for p in record["parameters"]}
    assert [n for n in params if n.startswith("input_image")] == list(input_image_fields(fam.max_input_images))
    if fam.needs_image:
        assert params["input_image"]["required"]
    guidance = params["guidance"]
    assert guidance["default"] == fam.guidance.default
    assert guidance["constraints"]["minimum"] == fam.guidance.minimum
    assert guidance["constraints"]["maximum"] == fam.guidance.maximum
    assert params["steps"]["default"] == 2  # the registry's override on top of the family's default


@pytest.mark.parametrize("family", [f for f in BUILT if not FAMILIES[f].needs_image])
def test_text_to_image(families, family):
    submitted = families.a.submit(f"fam-{family}", prompt="a red fox", aspect_ratio="16:9", seed=5,
                                  output_format="png")
    image = image_of(families.a.wait(submitted["request_id"]))
    assert image.width > image.height  # about 1 MP at 16:9, resized from the 64x64-area generation


@pytest.mark.parametrize("family", [f for f in BUILT if FAMILIES[f].editing])
def test_edit(families, family):
    fam = FAMILIES[family]
    count = min(2, fam.max_input_images)
    images = dict(zip(input_image_fields(count), [png((200, 30, 30)), png((30, 30, 200), (64, 96))]))
    submitted = families.a.submit(f"fam-{family}", prompt="make it blue", seed=5, guidance=max(1.0, fam.guidance.minimum),
                                  **images)
    final = families.a.wait(submitted["request_id"])
    image_of(final)
    assert all(final["payload"][name].startswith("darkroom-blob:") for name in images)


def refused(families, family: str, payload: dict) -> dict:
    resp = families.a.post("/requests", {"model": f"fam-{family}", "payload": {"prompt": "x", **payload}})
    assert resp.status_code == 422, resp.text
    return resp.json()["error"]


@pytest.mark.parametrize("family", BUILT)
def test_an_image_beyond_what_the_model_takes_is_a_422_naming_it(families, family):
    count = FAMILIES[family].max_input_images
    fields = input_image_fields(count + 1)
    error = refused(families, family, {name: png((9, 9, 9)) for name in fields})
    assert error["field"] == f"payload.{fields[-1]}"
    if count == 0:
        assert "takes no input image" in error["message"]
    else:
        assert f"takes at most {count} input image" in error["message"]


@pytest.mark.parametrize("family", BUILT)
def test_guidance_outside_the_familys_range_is_a_422(families, family):
    fam = FAMILIES[family]
    images = {"input_image": png((9, 9, 9))} if fam.needs_image else {}
    error = refused(families, family, {"guidance": fam.guidance.maximum + 1, **images})
    assert error["field"] == "payload.guidance"


@pytest.mark.parametrize("family", [f for f in BUILT if FAMILIES[f].needs_image])
def test_an_edit_only_model_needs_an_image(families, family):
    error = refused(families, family, {})
    assert error["field"] == "payload.input_image" and "required" in error["message"]
