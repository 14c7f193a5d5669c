"""The web playground at ``/``, driven in Chromium against a real server (see conftest.py)."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

try:
    from playwright.sync_api import expect
except ImportError:  # the dev extra installs it
    if os.environ.get("DARKROOM_TEST_SKIP_BROWSER") == "1":
        pytest.skip("playwright is not installed", allow_module_level=True)
    raise

from darkroom.imaging import size_for_aspect
from darkroom.testing.api import Api
from darkroom.testing.server import wait_for

from _browser import DESKTOP, KEY_STORAGE, PHONE, open_with_key

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
RUN = 180_000  # ms: a generation on a busy 2-core machine
expect.set_options(timeout=60_000)


def _wait_new_request(page, before: str | None) -> str:
    """Wait until the result panel follows a request other than ``before``; its id."""
    page.wait_for_function("(old) => { const id = document.getElementById('current').dataset.requestId;"
                           " return id && id !== old; }", arg=before)
    return page.locator("#current").get_attribute("data-request-id")


def _generate(page, prompt: str, *, model: str = "tiny") -> str:
    """Fill the form, press Generate, wait for the image; returns the request id."""
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("Prompt", exact=True).fill(prompt)
    before = page.locator("#current").get_attribute("data-request-id")
    page.get_by_role("button", name="Generate").click()
    _wait_new_request(page, before)
    expect(page.locator("#status")).to_have_attribute("data-status", "success", timeout=RUN)
    expect(page.locator("#image")).to_have_js_property("complete", True)
    return page.locator("#current").get_attribute("data-request-id")


def test_key_entered_once_kept_and_forgotten(browser_context, web_deployment) -> None:
    page = open_with_key(browser_context, web_deployment.server.url, None)
    recorded = page.recorded
    key_box = page.get_by_label("API key", exact=True)
    expect(key_box).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    assert not [u for u in recorded.urls if "/api/" in u], "no key, no calls"

    key_box.fill("dr_not-a-real-key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-error")).to_contain_text("refused")
    assert page.evaluate("(k) => localStorage.getItem(k)", KEY_STORAGE) is None

    key_box.fill(web_deployment.a.key)
    key_box.press("Enter")
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    assert page.evaluate("(k) => localStorage.getItem(k)", KEY_STORAGE) == web_deployment.a.key
    expect(page.locator("#key-label")).to_have_text(f"Key {web_deployment.a.key[:8]}…")

    page.reload()  # entered once: kept
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.get_by_label("API key", exact=True)).to_be_hidden()

    page.get_by_role("button", name="Forget key").click()
    expect(key_box).to_be_visible()
    expect(page.locator("#key-error")).to_contain_text("forgotten")
    assert page.evaluate("(k) => localStorage.getItem(k)", KEY_STORAGE) is None
    assert not recorded.foreign()
    page.close()


def test_form_is_built_from_the_model_records(page, web_deployment) -> None:
    models = web_deployment.a.get("/models").json()["models"]
    select = page.get_by_label("Model", exact=True)
    assert [o.get_attribute("value") for o in select.locator("option").all()] == [m["model"] for m in models]

    select.select_option("tiny")
    tiny = next(m for m in models if m["model"] == "tiny")
    for param in tiny["parameters"]:
        field = page.locator(f'[data-param="{param["name"]}"]')
        expect(field).to_have_count(1)
        expect(field.locator(".help")).to_contain_text(param["description"].split(";")[0])
    # generic fields carry the record's range and default
    steps = page.get_by_label("Steps", exact=True)
    assert (steps.get_attribute("min"), steps.get_attribute("max"), steps.input_value()) == ("1", "50", "2")
    expect(page.locator('[data-param="steps"] .help')).to_contain_text("1 to 50 · default 2")
    expect(page.locator('[data-param^="input_image"]')).to_have_count(0)  # not an editing model

    select.select_option("tiny-edit")
    for name in ("input_image", "input_image_2", "input_image_3", "input_image_4"):
        expect(page.locator(f'[data-param="{name}"] input[type=file]')).to_have_count(1)
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("3.5")

    # prompt: a character count against the 2,000 maximum
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a small red boat")
    expect(page.locator("#prompt-count")).to_have_text("16 / 2,000")
    prompt.fill("x" * 2001)
    expect(page.locator("#prompt-count")).to_have_class(re.compile(r"\bover\b"))

    # aspect ratio: the output size in pixels, as the server computes it
    aspect = page.get_by_label("Aspect ratio", exact=True)
    for ratio in ("1:1", "16:9", "3:7", "4:3"):
        aspect.select_option(ratio)
        w, h = size_for_aspect(*map(int, ratio.split(":")))
        expect(page.locator("#aspect-size")).to_have_text(f"{w:,} × {h:,} px")
    aspect.select_option("custom")
    page.get_by_label("Custom aspect ratio (W:H)").fill("5:4")
    expect(page.locator("#aspect-size")).to_have_text("{:,} × {:,} px".format(*size_for_aspect(5, 4)))
    page.get_by_label("Custom aspect ratio (W:H)").fill("9:1")
    expect(page.locator("#aspect-size")).to_contain_text("not a ratio")

    # the JS port of size_for_aspect agrees with the server for every ratio with sides up to 21
    ratios = [(w, h) for w in range(1, 22) for h in range(1, 22) if 3 / 7 - 1e-9 <= w / h <= 7 / 3 + 1e-9]
    sizes = page.evaluate("async (rs) => { const m = await import('./web/app.js');"
                          " return rs.map(([w, h]) => m.sizeForAspect(w, h)); }", ratios)
    assert [tuple(s) for s in sizes] == [size_for_aspect(w, h) for w, h in ratios]

    # the dice draws a seed in range
    page.get_by_role("button", name="Random seed").click()
    seed = int(page.get_by_label("Seed", exact=True).input_value())
    assert 1 <= seed <= 2147483647


def test_submit_from_the_form_shows_the_image_seed_size_timings_and_download(page, web_deployment,
                                                                             tmp_path) -> None:
    page.get_by_label("Model", exact=True).select_option("tiny")
    page.get_by_label("Aspect ratio", exact=True).select_option("16:9")
    page.get_by_label("Seed", exact=True).fill("77")
    page.get_by_label("Format", exact=True).select_option("png")
    page.get_by_label("Safety tolerance", exact=True).fill("4")
    rid = _generate(page, "a lighthouse on a cliff at dusk")
    expect(page.locator("#status")).to_have_text("Done")
    assert page.locator("#image").evaluate("(img) => [img.naturalWidth, img.naturalHeight]") == [1360, 768]
    meta = page.locator("#meta")
    expect(meta).to_contain_text("Seed77")
    expect(meta).to_contain_text("1,360 × 768 px")
    expect(meta).to_contain_text("PNG")
    expect(meta).to_contain_text(re.compile(r"Engine time[\d,]+ ms"))
    expect(page.locator("#progress")).to_have_js_property("value", 2)  # full: 2 of the model's 2 steps
    # what was sent is what was asked (and only what the user set, plus the prompt)
    payload = web_deployment.a.status(rid)["payload"]
    assert (payload["seed"], payload["aspect_ratio"], payload["output_format"], payload["safety_tolerance"]) == (
        77, "16:9", "png", 4)
    # download
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download").click()
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == f"darkroom-{rid[:8]}.png"
    assert Image.open(saved).size == (1360, 768)
    # reuse seed
    page.get_by_role("button", name="Random seed").click()
    page.get_by_role("button", name=re.compile("Reuse seed 77")).click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value("77")


def test_progress_moves_queue_position_and_cancel(page, web_deployment) -> None:
    page.get_by_label("Model", exact=True).select_option("tiny-slow")
    page.get_by_label("Steps", exact=True).fill("2000")  # minutes: it is cancelled long before the end
    page.get_by_label("Prompt", exact=True).fill("a very slow spiral")
    page.get_by_role("button", name="Generate").click()
    running_id = _wait_new_request(page, None)
    count = page.locator("#progress-text")
    expect(count).to_have_text(re.compile(r"step [1-9]\d* / 2000"), timeout=RUN)
    first = int(page.locator("#progress").evaluate("(p) => p.value"))
    page.wait_for_function(f"() => document.getElementById('progress').value > {first}", timeout=RUN)
    assert page.locator("#progress").evaluate("(p) => p.max") == 2000
    # the step previews, as they come
    expect(page.locator("#caption")).to_have_text(re.compile(r"^Preview at step \d+$"), timeout=RUN)
    assert "/media/" in page.locator("#image").get_attribute("src")

    # a second request waits behind the running one: its place in the queue shows
    page.get_by_label("Prompt", exact=True).fill("another slow spiral")
    page.get_by_role("button", name="Generate").click()
    queued_id = _wait_new_request(page, running_id)
    expect(page.locator("#status")).to_have_text(re.compile(r"^Queued: (next in line|\d+ ahead)$"))
    page.get_by_role("button", name="Cancel", exact=True).click()  # cancel while queued
    expect(page.locator("#status")).to_have_text("Cancelled")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()

    # the running one, from the gallery: open it, cancel it
    card = page.locator(f'.card[data-request-id="{running_id}"]')
    page.get_by_role("button", name="Refresh").click()
    card.click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#detail-status")).to_contain_text("processing")
    dialog.get_by_role("button", name="Cancel request").click()
    wait_for(lambda: web_deployment.a.status(running_id)["status"] == "cancelled", timeout=60,
             what="the running request to end cancelled")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.get_by_role("button", name="Refresh").click()
    expect(card.locator(".badge")).to_have_text("cancelled")

    # cancel from the result panel while running
    page.get_by_label("Prompt", exact=True).fill("a third slow spiral")
    page.get_by_role("button", name="Generate").click()
    rid = _wait_new_request(page, queued_id)
    expect(count).to_have_text(re.compile(r"step [1-9]\d* / 2000"), timeout=RUN)
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#status")).to_have_text("Cancelled", timeout=RUN)
    final = web_deployment.a.status(rid)
    assert final["status"] == "cancelled" and final["started_at"] is not None  # it had been running


def test_validation_errors_show_next_to_their_field(page) -> None:
    page.get_by_label("Model", exact=True).select_option("tiny")
    page.get_by_label("Prompt", exact=True).fill("a green square")
    seed = page.get_by_label("Seed", exact=True)
    seed.fill("2147483648")
    page.get_by_role("button", name="Generate").click()
    error = page.locator('[data-param="seed"] .error')
    expect(error).to_be_visible()
    expect(error).to_have_text(re.compile(r"^must be at most .*, got 2147483648$"))  # the API's words
    expect(seed).to_have_attribute("aria-invalid", "true")
    expect(seed).to_be_focused()
    assert "f-seed-error" in seed.get_attribute("aria-describedby")
    expect(page.locator("#form-error")).to_contain_text("seed")
    seed.fill("5")  # typing clears it
    expect(error).to_be_hidden()

    page.get_by_label("Steps", exact=True).fill("51")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator('[data-param="steps"] .error')).to_have_text(re.compile(r"at most 50"))
    page.get_by_label("Steps", exact=True).fill("2")

    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator('[data-param="prompt"] .error')).to_have_text(re.compile(r"blank"))
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    expect(page.locator('[data-param="seed"] .error')).to_be_hidden()


def test_edit_using_a_previous_result(page, web_deployment, tmp_path) -> None:
    source_id = _generate(page, "a red circle")
    # from the result panel
    page.get_by_role("button", name="Edit this image").click()
    expect(page.get_by_label("Model", exact=True)).to_have_value("tiny-edit")
    thumb = page.locator('[data-param="input_image"] img.thumb')
    expect(thumb).to_be_visible()
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("1.5")  # the record's edit_default
    page.get_by_role("button", name="Remove input image", exact=True).click()
    expect(thumb).to_be_hidden()
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("3.5")

    # from the gallery: open the request, use its image as the input of an edit
    page.locator(f'.card[data-request-id="{source_id}"]').click()
    page.locator("#detail").get_by_role("button", name="Use as input of an edit").click()
    expect(thumb).to_be_visible()
    # and an extra reference from a file
    ref = tmp_path / "reference.png"
    Image.new("RGB", (96, 64), (20, 160, 220)).save(ref)
    page.locator('[data-param="input_image_2"] input[type=file]').set_input_files(str(ref))
    expect(page.locator('[data-param="input_image_2"] img.thumb')).to_be_visible()
    edit_id = _generate(page, "make it blue", model="tiny-edit")
    final = web_deployment.a.status(edit_id)
    assert final["model"] == "tiny-edit" and final["status"] == "success"
    assert final["payload"]["input_image"].startswith("darkroom-blob:")
    assert final["payload"]["input_image_2"].startswith("darkroom-blob:")
    assert final["payload"]["guidance"] == 1.5


def test_gallery_pages_opens_reruns_and_downloads(browser_context, web_deployment) -> None:
    carol = Api(web_deployment.server.url, web_deployment.c_key)
    done = carol.wait(carol.submit("tiny", prompt="the first of carol's requests", seed=5)["request_id"])
    assert done["status"] == "success"
    ids = [done["request_id"]]
    for i in range(10):  # queued behind nothing, cancelled at once: cheap rows for the pages
        rid = carol.submit("tiny-slow", prompt=f"carol request {i}")["request_id"]
        carol.post(f"/requests/{rid}/cancel")
        ids.append(rid)
    page = open_with_key(browser_context, web_deployment.server.url, carol.key)
    recorded = page.recorded
    cards = page.locator("#gallery-list .card")
    expect(page.locator("#page-info")).to_have_text("1–8 of 11")
    expect(cards).to_have_count(8)
    expect(page.get_by_role("button", name="Newer")).to_be_disabled()
    expect(cards.first).to_contain_text("carol request 9")  # newest first
    page.get_by_role("button", name="Older").click()
    expect(page.locator("#page-info")).to_have_text("9–11 of 11")
    expect(cards).to_have_count(3)
    expect(page.get_by_role("button", name="Older")).to_be_disabled()
    first = page.locator(f'.card[data-request-id="{done["request_id"]}"]')
    expect(first.locator("img")).to_be_visible()
    expect(first.locator(".badge")).to_have_text("success")
    expect(page.locator(f'.card[data-request-id="{ids[1]}"] .badge')).to_have_text("cancelled")

    # open it (with the keyboard): its parameters, download, re-run
    first.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    params = dialog.locator("#detail-params")
    expect(params).to_contain_text("the first of carol's requests")
    expect(params.locator("tr", has_text="seed")).to_contain_text("5")
    expect(dialog.get_by_role("link", name="Download")).to_have_attribute("download", f"darkroom-{ids[0][:8]}.jpg")
    href = dialog.get_by_role("link", name="Download").get_attribute("href")
    assert Image.open(io.BytesIO(httpx.get(href, timeout=30).content)).size == (1024, 1024)
    dialog.get_by_role("button", name="Re-run").click()
    expect(dialog).to_be_hidden()
    rerun_id = _wait_new_request(page, None)
    expect(page.locator("#status")).to_have_attribute("data-status", "success", timeout=RUN)
    assert rerun_id not in ids
    rerun = carol.status(rerun_id)
    assert rerun["payload"] == done["payload"] and rerun["outcome"]["seed"] == 5
    expect(page.locator("#page-info")).to_have_text("1–8 of 12")  # a submit shows the first page again
    expect(cards.first).to_contain_text("the first of carol's requests")
    assert not recorded.foreign()
    page.close()


def test_keyboard_only_and_every_control_labelled(page, web_deployment) -> None:
    page.get_by_label("Model", exact=True).select_option("tiny-edit")  # the most controls
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button, a[href]')]
        .filter((el) => el.offsetParent !== null || el.closest('dialog'))
        .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label')
                          || el.getAttribute('aria-labelledby') || el.textContent.trim()))
        .map((el) => el.outerHTML.slice(0, 120))""")
    assert unlabelled == []
    # from the top of the page, Tab reaches the prompt and then Generate; Ctrl+Enter submits
    page.locator("body").focus()
    seen = []
    for _ in range(60):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("() => document.activeElement.id || document.activeElement.tagName"))
        if seen[-1] == "submit":
            break
    assert "f-prompt" in seen and seen[-1] == "submit", seen
    page.get_by_label("Model", exact=True).focus()
    page.keyboard.press("ArrowUp")  # back to tiny (the default, first in the list)
    expect(page.get_by_label("Model", exact=True)).to_have_value("tiny")
    page.get_by_label("Prompt", exact=True).focus()
    page.keyboard.type("typed without a mouse")
    page.keyboard.press("Control+Enter")
    rid = _wait_new_request(page, None)
    expect(page.locator("#status")).to_have_attribute("data-status", "success", timeout=RUN)
    assert web_deployment.a.status(rid)["payload"]["prompt"] == "typed without a mouse"


def test_no_request_to_another_host_and_docs_served_locally(page, web_deployment) -> None:
    _generate(page, "a quiet harbour")
    assert page.recorded.urls and not page.recorded.foreign()
    assert any("/events" in u for u in page.recorded.urls)  # the live stream, over fetch
    # /docs: Swagger UI's assets come from the package, not a CDN
    before = len(page.recorded.urls)
    page.goto(web_deployment.server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("darkroom")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert any(u.endswith("/web/vendor/swagger-ui-bundle.js") for u in page.recorded.urls[before:])
    assert not page.recorded.foreign(), page.recorded.foreign()
    assert httpx.get(web_deployment.server.url + "/web/../pyproject.toml").status_code == 404
    assert httpx.get(web_deployment.server.url + "/web/index.html").status_code == 404


def test_screenshots_desktop_and_phone_light_and_dark(page, artefacts) -> None:
    _generate(page, "a lighthouse on a cliff at dusk, oil painting")
    shots = {}
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.evaluate("() => window.scrollTo(0, 0)")
        # readable at 390 px: nothing wider than the screen
        assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"]
        page.screenshot(path=str(artefacts / f"playground-{name}-full.png"), full_page=True)
        if name == "phone":  # the result, as it shows on a phone
            page.locator("#current").scroll_into_view_if_needed()
            page.evaluate("() => window.scrollBy(0, document.getElementById('current').getBoundingClientRect().top - 8)")
        shots[name] = artefacts / f"playground-{name}.png"
        page.screenshot(path=str(shots[name]))
    light = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert light != dark
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(artefacts / "playground-desktop-dark.png"))
    page.emulate_media(color_scheme="light")
    for path in artefacts.glob("*.png"):
        assert Image.open(path).width in (DESKTOP["width"], PHONE["width"])
    if os.environ.get("DARKROOM_UPDATE_SCREENSHOTS") == "1":  # refresh the README's pictures
        for name, path in shots.items():
            shutil.copy(path, DOCS_IMG / f"playground-{name}.png")
