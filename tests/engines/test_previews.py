"""Step previews from FluxEngine: small, RGB, and invisible in the final pixels."""

from __future__ import annotations

from PIL import Image

from darkroom.engines.base import GenerationJob, takes_preview
from darkroom.engines.flux import PREVIEW_MAX_SIDE


def job(request_id: str = "p1", *, width: int = 1024, height: int = 1024, seed: int = 3,
        steps: int = 4) -> GenerationJob:
    return GenerationJob(request_id=request_id, prompt="a blue square on sand", width=width, height=height,
                         seed=seed, steps=steps, guidance=3.5)


def test_takes_preview_tells_old_callbacks_from_new() -> None:
    def old(request_id, step, total):
        return True

    def new(request_id, step, total, preview=None):
        return True

    def loose(*args, **kwargs):
        return True

    assert not takes_preview(old)
    assert takes_preview(new) and takes_preview(loose)


def test_previews_do_not_change_the_pixels(flux_engine) -> None:
    previews: list[tuple[int, Image.Image]] = []

    def plain(request_id, step, total):
        return True

    def with_previews(request_id, step, total, preview=None):
        assert preview is not None
        previews.append((step, preview()))  # every step: the most a worker could ask for
        return True

    [without] = flux_engine.generate([job()], plain)
    [with_] = flux_engine.generate([job()], with_previews)
    assert without.image is not None and with_.image is not None
    assert with_.image.tobytes() == without.image.tobytes()
    assert [step for step, _ in previews] == [1, 2, 3, 4]
    # The image changes as denoising goes on.
    assert previews[0][1].tobytes() != previews[-1][1].tobytes()


def test_preview_is_small_rgb_at_the_jobs_aspect(make_engine) -> None:
    # tiny-direct has no native_area, so the pipeline runs at the job's own (large) size
    # and the preview must be scaled down to PREVIEW_MAX_SIDE.
    engine = make_engine("tiny-direct")
    sizes: list[tuple[int, int]] = []

    def on_step(request_id, step, total, preview=None):
        image = preview()
        assert image.mode == "RGB"
        sizes.append(image.size)
        return True

    [result] = engine.generate([job(width=1360, height=768, steps=1)], on_step)
    assert result.image is not None and result.image.size == (1360, 768)
    [(width, height)] = sizes
    assert width == PREVIEW_MAX_SIDE and height < width
    assert abs(width / height - 1360 / 768) < 0.1


def test_preview_of_a_batch_is_each_jobs_own(make_engine) -> None:
    engine = make_engine("tiny-batched")
    seen: dict[str, bytes] = {}

    def on_step(request_id, step, total, preview=None):
        seen[request_id] = preview().tobytes()
        return True

    engine.generate([job("a", seed=1, steps=1), job("b", seed=2, steps=1)], on_step)
    assert seen["a"] != seen["b"]
