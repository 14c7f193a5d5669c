"""The shipped darkroom-mini weights, served for real: a ``darkroom serve`` on loopback with the repo's
own registry (``models/models.toml``), requests through the HTTP API, results scored by the world's
evaluator (``training/evaluate.py``: colour segmentation + geometric shape classifier).

Prompts and seeds are fixed (the README's prompt at seed 1; the first two held-out prompts per category and
the first two paraphrases per category of the evaluator's sets; one edit per kind), so the outcomes are fixed
too: these are regression checks of the committed weights (run 18). Each floor sits a little below what run 18
scored on exactly these cases (the figure beside it) to allow for float differences across CPUs. The
issue's targets are higher and are measured on the full evaluation, not here (docs/darkroom-mini.md, "Results").
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

README_PROMPT = "a red circle to the left of a blue square"
HELDOUT_FLOOR = 0.75  # fraction of the 12 held-out prompts scored correct (run 18: 1.0, 12 of 12; run 17 the same)
# mean fraction of checks passed on the 12 paraphrases (run 18: 0.312; run 17 0.285, run 16 0.40, runs 9-16 floored
# at 0.30).
# Paraphrases are the target the MiniLM encoder blocks (0.06-0.08 correct on the evaluator's 72 for runs 16-18);
# what this floor guards is the text path itself: run 17 given an empty prompt, or another case's prompt,
# passes 0.15 and 0.14 of these checks.
PARAPHRASE_CHECKS_FLOOR = 0.25
EDIT_FLOOR = 0.8  # fraction of the 5 edits scored correct (run 18: 1.0, 5 of 5; run 17 0.8, floored at 0.6)
PSNR_FLOOR = 25.0  # dB over the untouched regions, mean of the 5 edits at 1 MP (run 18: 28.3; run 17 27.5)


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    dep = start_deployment(tmp_path_factory.mktemp("mini"), ROOT / "models" / "models.toml")
    yield dep
    dep.server.stop()


@pytest.fixture(scope="module")
def sets() -> dict:
    """One edit per kind (the edits follow the prompts in the sets' random stream, so this stays n_per_cat=1)."""
    return world.eval_sets(n_per_cat=1, n_edits_per_kind=1)


@pytest.fixture(scope="module")
def prompt_sets() -> dict:
    """Two held-out prompts and two paraphrases per category."""
    return world.eval_sets(n_per_cat=2, n_edits_per_kind=1)


def _image(final: dict) -> Image.Image:
    assert final["status"] == "success", final
    resp = httpx.get(final["outcome"]["media_urls"][0]["url"], timeout=30)
    assert resp.status_code == 200
    return Image.open(io.BytesIO(resp.content)).convert("RGB")


def _b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _score_prompts(mini: Deployment, cases: list, seed0: int) -> list[dict]:
    ids = [mini.a.submit("darkroom-mini", prompt=cap, aspect_ratio=scene.aspect, seed=seed0 + i, output_format="png")
           ["request_id"] for i, (cap, _, scene) in enumerate(cases)]
    return [ev.score(_image(mini.a.wait(request_id)), spec) for request_id, (_, spec, _) in zip(ids, cases)]


def test_darkroom_mini_is_the_default_with_its_real_ranges(mini: Deployment) -> None:
    assert mini.a.get("/models").json()["model_ids"][0] == "darkroom-mini"
    info = mini.a.get("/models/darkroom-mini").json()
    params = {p["name"]: p for p in info["parameters"]}
    assert params["steps"]["default"] == 8
    assert params["steps"]["constraints"] == {"minimum": 1, "maximum": 50}
    assert params["guidance"]["default"] == 2.0 and params["guidance"]["edit_default"] == 1.0
    assert params["guidance"]["constraints"]["minimum"] == 1.0
    assert "input_image" in params  # Kontext editing
    assert params["aspect_ratio"]["constraints"]["range"] == "3:7 to 7:3"


def test_readme_prompt_is_drawn_correctly(mini: Deployment) -> None:
    final = mini.a.wait(mini.a.submit("darkroom-mini", prompt=README_PROMPT, seed=1, output_format="png")
                        ["request_id"])
    image = _image(final)
    assert image.size == (1024, 1024)
    result = ev.score(image, ev.spec_for_prompt(README_PROMPT))
    assert result["correct"], result["checks"]


def test_fixed_heldout_prompts_pass_the_evaluator(mini: Deployment, prompt_sets: dict) -> None:
    cases = prompt_sets["heldout"]
    results = _score_prompts(mini, cases, seed0=100)
    correct = float(np.mean([r["correct"] for r in results]))
    print(f"held-out correct {correct:.3f}")
    assert correct >= HELDOUT_FLOOR, [(cap, r["checks"]) for (cap, _, _), r in zip(cases, results)]


def test_fixed_paraphrases_pass_checks(mini: Deployment, prompt_sets: dict) -> None:
    cases = prompt_sets["paraphrase"]
    results = _score_prompts(mini, cases, seed0=300)
    checks = float(np.mean([np.mean(list(r["checks"].values())) if r["checks"] else 0.0 for r in results]))
    print(f"paraphrase checks passed {checks:.3f}")
    assert checks >= PARAPHRASE_CHECKS_FLOOR, [(cap, r["checks"]) for (cap, _, _), r in zip(cases, results)]


def test_fixed_edits_pass_the_evaluator(mini: Deployment, sets: dict) -> None:
    results = []
    for i, (instruction, src, tgt, spec) in enumerate(sets["edits"]):
        source, target = world.render_pair(src, tgt)
        final = mini.a.wait(mini.a.submit("darkroom-mini", prompt=instruction, input_image=_b64_png(source),
                                          seed=200 + i, output_format="png")["request_id"])
        assert final["payload"]["guidance"] == 1.0  # the edit default, not text-to-image's 2
        results.append(ev.score_edit(_image(final), source, target, spec))
    correct = float(np.mean([r["correct"] for r in results]))
    psnr = float(np.nanmean([r["psnr"] for r in results]))
    print(f"edits correct {correct:.3f} psnr {psnr:.2f}")
    assert correct >= EDIT_FLOOR, [r["checks"] for r in results]
    assert psnr >= PSNR_FLOOR


def test_same_seed_same_pixels_through_the_server(mini: Deployment) -> None:
    ids = [mini.a.submit("darkroom-mini", prompt="two yellow stars", seed=42, output_format="png")["request_id"]
           for _ in range(2)]
    first, second = (_image(mini.a.wait(i)) for i in ids)
    assert first.tobytes() == second.tobytes()
