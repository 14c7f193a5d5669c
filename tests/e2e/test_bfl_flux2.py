"""BFL's FLUX.2 routes (``/v1/flux-2-pro``, ``-flex``, ``-max``, ``-klein-4b``, ``-klein-9b``) on a
real ``darkroom serve``: each is an alias of a model the deployment has (tiny random-weight
FLUX.2 and FLUX.2 [klein] pipelines here), takes ``input_image`` .. ``input_image_8`` as far as
the model behind it does, and keeps BFL's FLUX.2 safety_tolerance range (0-5).

The official ``blackforest`` client has no FLUX.2 inputs (its model list stops at FLUX.1 and
Kontext), so tasks are submitted over plain HTTP and polled with the client's
``get_task_status``.
"""

from __future__ import annotations

import base64
import io
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from darkroom.testing.server import Server, create_key, darkroom_env, wait_for

# The blackforest package's own pydantic models use deprecated Field arguments.
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")

PRIMARY = "/api/v1/ie/requestqueue/apikey"

REGISTRY = """
default = "f2"

[models.f2]
pipeline = "flux2"
path = "{flux2}"
aliases = ["flux-2-pro", "flux-2-flex"]
[models.f2.parameters]
steps = {{ default = 2, minimum = 1, maximum = 50 }}
[models.f2.options]
native_area = 4096

[models.klein]
pipeline = "flux2-klein"
path = "{klein}"
aliases = ["flux-2-klein-4b"]
[models.klein.parameters]
steps = {{ default = 2, minimum = 1, maximum = 50 }}
[models.klein.options]
native_area = 4096

[models.text]
pipeline = "flux"
path = "{text}"
aliases = ["flux-2-klein-9b"]
[models.text.parameters]
steps = {{ default = 2, minimum = 1, maximum = 50 }}
[models.text.options]
native_area = 4096
max_sequence_length = 16
"""


@dataclass
class Bfl:
    url: str
    key: str

    def post(self, name: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/{name}", json=body, headers={"x-key": self.key}, timeout=60)


@pytest.fixture(scope="module")
def bfl(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    from darkroom.testing.tiny_families import build_tiny

    root = tmp_path_factory.mktemp("flux2")
    text = tomllib.loads(tiny_models.read_text())["models"]["tiny"]["path"]
    registry = root / "models.toml"
    registry.write_text(REGISTRY.format(flux2=build_tiny("flux2", root / "flux2"),
                                        klein=build_tiny("flux2-klein", root / "klein"), text=text))
    env = darkroom_env(root / "data", registry)
    key = create_key(env, "alice")
    server = Server(env, root / "serve.log").start()
    yield Bfl(server.url, key)
    server.stop()


def _png(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG")  # FLUX.2 takes references of 64 px a side or more
    return base64.b64encode(buf.getvalue()).decode()


def _images(count: int) -> dict[str, str]:
    names = ["input_image"] + [f"input_image_{i}" for i in range(2, count + 1)]
    return {name: _png((30 * i, 200 - 20 * i, 90)) for i, name in enumerate(names)}


def _ready(bfl: Bfl, task_id: str) -> dict:
    """Polled with the official client until the task is no longer Pending."""
    from blackforest import BFLClient

    client = BFLClient(api_key=bfl.key, base_url=bfl.url, timeout=60)
    status = wait_for(lambda: (s := client.get_task_status(task_id)).status != "Pending" and s, timeout=300,
                      what=f"task {task_id} to end")
    assert status.status == "Ready", status
    return status.result


def test_flux2_pro_takes_eight_references_and_makes_the_image(bfl: Bfl) -> None:
    resp = bfl.post("flux-2-pro", {"prompt": "the eight of them together", "seed": 7, **_images(8)})
    assert resp.status_code == 200, resp.text
    task = resp.json()
    assert task["polling_url"] == f"{bfl.url}/v1/get_result?id={task['id']}"
    result = _ready(bfl, task["id"])
    download = httpx.get(result["sample"], timeout=30)
    assert download.status_code == 200 and download.headers["content-type"] == "image/jpeg"
    # Stored as an ordinary request of the model behind the alias, every reference kept.
    status = httpx.get(f"{bfl.url}{PRIMARY}/requests/{task['id']}", headers={"Authorization": f"Bearer {bfl.key}"},
                       timeout=30).json()
    assert status["model"] == "f2"
    assert all(status["payload"][name].startswith("darkroom-blob:") for name in _images(8))


def test_a_reference_beyond_what_the_model_takes_is_a_422_naming_it(bfl: Bfl) -> None:
    # FLUX.2 [klein] takes four references: the fifth is refused, named, and nothing is queued.
    too_many = bfl.post("flux-2-klein-4b", {"prompt": "x", **_images(5)})
    assert too_many.status_code == 422, too_many.text
    body = too_many.json()
    assert body["detail"][0]["loc"] == ["body", "input_image_5"]
    assert "at most 4 input images" in body["message"]
    assert bfl.post("flux-2-klein-4b", {"prompt": "x", "steps": 1, **_images(4)}).status_code == 200
    # A text-only model behind a FLUX.2 name takes none.
    text_only = bfl.post("flux-2-klein-9b", {"prompt": "x", "input_image": _png((1, 2, 3))})
    assert text_only.status_code == 422, text_only.text
    assert text_only.json()["detail"][0]["loc"] == ["body", "input_image"]


def test_flux2_routes_keep_bfl_safety_tolerance_range(bfl: Bfl) -> None:
    refused = bfl.post("flux-2-pro", {"prompt": "x", "safety_tolerance": 6})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "safety_tolerance"]
    assert "at most 5" in refused.json()["message"]
    assert bfl.post("flux-2-flex", {"prompt": "x", "safety_tolerance": 6}).status_code == 422
    assert bfl.post("flux-2-pro", {"prompt": "x", "steps": 1, "safety_tolerance": 5}).status_code == 200
    # The same model under its own name keeps the older models' 0-6.
    assert bfl.post("f2", {"prompt": "x", "steps": 1, "safety_tolerance": 6}).status_code == 200
    # A FLUX.2 name no model answers to is a 404 naming it, whatever its body.
    unknown = bfl.post("flux-2-max", {"prompt": "x", "safety_tolerance": 6})
    assert unknown.status_code == 404 and "flux-2-max" in unknown.json()["detail"]


def test_the_openapi_document_has_each_served_flux2_route_with_its_body(bfl: Bfl) -> None:
    document = httpx.get(f"{bfl.url}/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]

    def body(path: str) -> dict:
        ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[-1]]

    pro, own = body("/v1/flux-2-pro"), body("/v1/f2")
    assert pro["properties"]["safety_tolerance"]["maximum"] == 5
    assert own["properties"]["safety_tolerance"]["maximum"] == 6
    assert [n for n in pro["properties"] if n.startswith("input_image")] == list(_images(8))
    assert [n for n in body("/v1/flux-2-klein-4b")["properties"] if n.startswith("input_image")] == list(_images(4))
    assert "/v1/flux-2-max" not in document["paths"]  # not served here: the generic route's 404
    generic = document["paths"]["/v1/{model}"]["post"]
    assert "flux-2-pro" in generic["parameters"][0]["schema"]["not"]["enum"]
