"""Step previews from DiffusersEngine: small, RGB, and invisible in the final pixels."""

from __future__ import annotations

from PIL import Image

from darkroom.engines.base import PREVIEW_MAX_SIDE, GenerationJob, takes_preview


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

    [result] = engine.generate([job(width=512, height=288, steps=1)], on_step)
    assert result.image is not None and result.image.size == (512, 288)
    assert sizes == [(PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE * 288 // 512)]


def test_preview_of_a_batch_is_each_jobs_own(make_engine) -> None:
    engine = make_engine("tiny-batched")
    seen: dict[str, bytes] = {}

    def on_step(request_id, step, total, preview=None):
        seen[request_id] = preview().tobytes()
        return True

    engine.generate([job("a", seed=1, steps=1), job("b", seed=2, steps=1)], on_step)
    assert seen["a"] != seen["b"]


# -- the worker's side: pacing and storing previews ---------------------------------------


def test_pacer_spaces_previews_by_steps_time_and_cost() -> None:
    from darkroom.worker.runner import PREVIEW_EVERY_S, PREVIEW_SHARE, PreviewPacer

    pacer = PreviewPacer(every=4)
    assert [s for s in range(1, 13) if pacer.due(s, 12, now=100.0)] == [4, 8]  # never the last step
    pacer.spent(100.0, 100.01)  # cheap: at most one a second
    assert not pacer.due(8, 12, now=100.0 + PREVIEW_EVERY_S - 0.01) and pacer.due(8, 12, now=100.0 + PREVIEW_EVERY_S)
    pacer.spent(200.0, 202.0)  # costly: previews stay at about PREVIEW_SHARE of the time
    assert not pacer.due(8, 12, now=200.0 + 2.0 / PREVIEW_SHARE - 0.01)
    assert not PreviewPacer(every=0).due(4, 12, now=0.0)


def test_worker_stores_a_small_jpeg_under_its_attempt(tmp_path) -> None:
    import io
    import time

    from darkroom.service import preview_key
    from darkroom.storage import LocalBlobStore
    from darkroom.store import Store
    from darkroom.worker.lease import BatchLease
    from darkroom.worker.stages import Stages, Task

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    key, _ = store.create_key("k")
    store.insert_request(key.id, "m", {"prompt": "x", "steps": 12, "guidance": 1.0})
    [request] = store.claim_batch("w", ["m"], 30, max_batch=1)
    blobs = LocalBlobStore(tmp_path / "blobs")
    stages = Stages(settings=None, store=store, blobs=blobs, moderator=None, upsampler=None,  # type: ignore[arg-type]
                    worker_id="w")
    task = Task.claimed(request, BatchLease(store, "w", [request.id], lease_s=30), time.time())
    stages.store_preview(task, 4, Image.new("RGB", (1024, 512), "red"))
    image = Image.open(io.BytesIO(blobs.get(preview_key(request.id, 1))))
    assert image.format == "JPEG" and image.size == (256, 128) and task.preview_written
    stages.release(task)  # the preview goes with the request's run
    assert not (tmp_path / "blobs" / preview_key(request.id, 1)).exists()
