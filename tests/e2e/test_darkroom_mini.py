"""The shipped darkroom-mini weights, served for real: a ``darkroom serve`` on loopback with the repo's
own registry (``models/models.toml``), requests through the HTTP API, results scored by the world's
evaluator (``training/evaluate.py``: colour segmentation + geometric shape classifier).

The prompts are fixed (the README's, then the first prompts of the evaluator's held-out and paraphrase
sets at its default seed) and so are the seeds, so these are regression checks of the committed weights.
Weights land only when they meet the issue's targets on the full evaluation (>= 0.90 held-out, >= 0.85
edits, >= 30 dB untouched); the floors here sit below those targets to allow for 12 prompts and 5 edits.
Checked against run 2's (uncommitted) weights: the model-info and determinism tests pass, the scored ones
fail as they should (README prompt wrong, 1/12 prompts, 1/5 edits).
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from darkroom.testing.api import Deployment, start_deployment

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training import evaluate as ev  # noqa: E402
from training import world  # noqa: E402

WEIGHTS = ROOT / "models" / "darkroom-mini" / "transformer" / "diffusion_pytorch_model.safetensors"
# darkroom-mini's weights land only once they pass the evaluator (docs/darkroom-mini.md, "Results"); until
# then these acceptance checks of the shipped weights have nothing to load. The engine's handling of a
# model without weights (model_unavailable) is tested in tests/engines and tests/e2e/test_cli_sdk.py.
pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="darkroom-mini weights are not committed yet")

README_PROMPT = "a red circle to the left of a blue square"
N_PER_SPLIT = 6  # held-out and paraphrase prompts (one per category)
T2I_FLOOR = 0.75  # fraction of the fixed prompts the evaluator must score correct
EDIT_FLOOR = 0.6
PSNR_FLOOR = 28.0  # dB over the untouched regions, mean of the fixed edits


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    dep = start_deployment(tmp_path_factory.mktemp("mini"), ROOT / "models" / "models.toml")
    yield dep
    dep.server.stop()


@pytest.fixture(scope="module")
def sets() -> dict:
    return world.eval_sets(n_per_cat=1, n_edits_per_kind=1)


def _image(final: dict) -> Image.Image:
    assert final["status"] == "success", final
    resp = httpx.get(final["outcome"]["media_urls"][0]["url"], timeout=30)
    assert resp.status_code == 200
    return Image.open(io.BytesIO(resp.content)).convert("RGB")


def _b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_darkroom_mini_is_the_default_with_its_real_ranges(mini: Deployment) -> None:
    assert "darkroom-mini" in mini.a.get("/models").json()["model_ids"]
    info = mini.a.get("/models/darkroom-mini").json()
    params = {p["name"]: p for p in info["parameters"]}
    assert params["steps"]["default"] == 8
    assert params["steps"]["constraints"] == {"minimum": 1, "maximum": 50}
    assert params["guidance"]["default"] == 1.0 and params["guidance"]["constraints"]["minimum"] == 1.0
    assert "input_image" in params  # Kontext editing
    assert params["aspect_ratio"]["constraints"]["range"] == "3:7 to 7:3"


def test_readme_prompt_is_drawn_correctly(mini: Deployment) -> None:
    final = mini.a.wait(mini.a.submit("darkroom-mini", prompt=README_PROMPT, seed=1, output_format="png")
                        ["request_id"])
    image = _image(final)
    assert image.size == (1024, 1024)
    result = ev.score(image, ev.spec_for_prompt(README_PROMPT))
    assert result["correct"], result["checks"]


def test_fixed_prompts_pass_the_evaluator(mini: Deployment, sets: dict) -> None:
    cases = [(cap, spec, scene.aspect) for split in ("heldout", "paraphrase") for cap, spec, scene in sets[split]]
    cases = cases[:N_PER_SPLIT] + cases[len(sets["heldout"]):][:N_PER_SPLIT]
    ids = [mini.a.submit("darkroom-mini", prompt=cap, aspect_ratio=aspect, seed=100 + i, output_format="png")
           ["request_id"] for i, (cap, _, aspect) in enumerate(cases)]
    correct = []
    for request_id, (cap, spec, aspect) in zip(ids, cases):
        image = _image(mini.a.wait(request_id))
        correct.append(ev.score(image, spec)["correct"])
    assert np.mean(correct) >= T2I_FLOOR, list(zip([c for c, _, _ in cases], correct))


def test_fixed_edits_pass_the_evaluator(mini: Deployment, sets: dict) -> None:
    results = []
    for i, (instruction, src, tgt, spec) in enumerate(sets["edits"]):
        source, target = world.render_pair(src, tgt)
        final = mini.a.wait(mini.a.submit("darkroom-mini", prompt=instruction, input_image=_b64_png(source),
                                          seed=200 + i, output_format="png")["request_id"])
        out = _image(final)
        results.append(ev.score_edit(out, source, target, spec))
    assert np.mean([r["correct"] for r in results]) >= EDIT_FLOOR, [r["checks"] for r in results]
    assert np.nanmean([r["psnr"] for r in results]) >= PSNR_FLOOR


def test_same_seed_same_pixels_through_the_server(mini: Deployment) -> None:
    ids = [mini.a.submit("darkroom-mini", prompt="two yellow stars", seed=42, output_format="png")["request_id"]
           for _ in range(2)]
    first, second = (_image(mini.a.wait(i)) for i in ids)
    assert first.tobytes() == second.tobytes()
