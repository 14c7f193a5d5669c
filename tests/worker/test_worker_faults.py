"""The worker's correctness under faults, with in-process workers on a real SQLite store and
the tiny random FLUX pipelines: a load longer than the lease, store errors while reporting
progress, a worker that lost its lease, a cancel that arrives while the image is stored."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from darkroom.domain import Status, SubmitOptions
from darkroom.engines import create_engine
from darkroom.service import result_key
from darkroom.settings import Settings
from darkroom.spec import build_spec
from darkroom.storage import LocalBlobStore
from darkroom.store import Store
from darkroom.worker.lease import BatchLease
from darkroom.worker.runner import build_worker
from darkroom.worker.stages import Stages, Task

PAYLOAD = {"prompt": "a red circle", "steps": 3, "guidance": 3.5, "aspect_ratio": "1:1", "seed": 5,
           "output_format": "png", "safety_tolerance": 2, "prompt_upsampling": False}


def _settings(tmp_path: Path, tiny_models: Path, **extra) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_file=tiny_models, worker_models=["tiny"],
                    image_moderation="fallback", **extra)


def _submit(store: Store, key_id: str, **fields) -> str:
    payload = {**PAYLOAD, **fields}
    submitted = store.submit_request(key_id, "tiny", payload, options=SubmitOptions(),
                                     spec=build_spec("tiny", payload))
    assert submitted is not None
    return submitted.request.id


def _wait_ended(store: Store, request_id: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = store.get_request(request_id)
        if request.status.is_terminal:
            return request
        time.sleep(0.05)
    raise TimeoutError(f"{request_id} did not end in {timeout} s")


class _Running:
    """Workers on threads, stopped (and their loops joined) on exit."""

    def __init__(self, workers) -> None:
        self.workers = workers
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=w.run, args=(self.stop,), daemon=True) for w in workers]

    def __enter__(self) -> _Running:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for w in self.workers:
            w.stop_waiting()
        for t in self.threads:
            t.join(timeout=60)


class SlowLoading:
    """The real engine, whose load takes ``delay_s`` longer (a big checkpoint read from disk)."""

    def __init__(self, engine, delay_s: float) -> None:
        self.engine = engine
        self.delay_s = delay_s
        self.model_id = engine.model_id

    def load(self) -> None:
        time.sleep(self.delay_s)
        self.engine.load()

    def generate(self, jobs, on_step, **options):
        return self.engine.generate(jobs, on_step, **options)

    def close(self) -> None:
        self.engine.close()


def test_a_load_longer_than_the_lease_does_not_cost_an_attempt(tmp_path: Path, tiny_models: Path) -> None:
    """Worker B (another model) sweeps for stalled leases every 5 s; worker A's model takes 6 s
    to load, the lease is 1 s. Had A claimed before loading, B's sweep would requeue the request."""
    settings = _settings(tmp_path, tiny_models, lease_s=1.0)
    store = Store.from_settings(settings)
    store.migrate()
    key, _ = store.create_key("k")
    request_id = _submit(store, key.id)  # queued before A has its model loaded

    def slow(spec, device):
        return SlowLoading(create_engine(spec, device), delay_s=6.0)

    sweeper = build_worker(settings.model_copy(update={"worker_models": ["tiny-edit"]}), store=store)
    loader = build_worker(settings, store=store)
    loader.engine_factory = slow
    # One after the other: loading two pipelines on two threads of one process at once is not
    # safe in transformers/diffusers (their meta-device contexts are process-wide).
    with _Running([sweeper]):
        deadline = time.monotonic() + 120
        while store.active_workers("tiny-edit") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        with _Running([loader]):
            ended = _wait_ended(store, request_id)
    assert ended.status == Status.SUCCESS and ended.attempts == 1, ended


class FlakyProgress(Store):
    """A real store whose first progress writes fail as a dropped database connection does."""

    failures = 0

    def report_progress_batch(self, *args, **kwargs):
        if self.failures < 3:
            self.failures += 1
            raise sa.exc.OperationalError("UPDATE requests ...", {}, Exception("server closed the connection"))
        return super().report_progress_batch(*args, **kwargs)


def test_a_store_error_while_reporting_progress_fails_nothing(tmp_path: Path, tiny_models: Path) -> None:
    settings = _settings(tmp_path, tiny_models)
    settings.data_dir.mkdir(parents=True)
    store = FlakyProgress(settings.resolved_database_url())
    store.migrate()
    key, _ = store.create_key("k")
    worker = build_worker(settings, store=store)
    with _Running([worker]):
        first = _wait_ended(store, _submit(store, key.id, steps=6))
        second = _wait_ended(store, _submit(store, key.id, seed=6))  # and the worker keeps serving
    assert store.failures == 3
    assert first.status == Status.SUCCESS and second.status == Status.SUCCESS
    assert first.attempts == 1 and first.progress_step == 6


@pytest.fixture
def claimed(tmp_path: Path):
    """A store, blob store and a request claimed by worker w1."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    key, _ = store.create_key("k")
    _submit(store, key.id)
    [request] = store.claim_batch("w1", ["tiny"], 30, max_batch=1)
    return store, LocalBlobStore(tmp_path / "blobs"), key, request


def _stages(store: Store, blobs: LocalBlobStore, worker_id: str) -> Stages:
    from darkroom.safety import Moderator

    return Stages(settings=None, store=store, blobs=blobs,  # type: ignore[arg-type]
                  moderator=Moderator(image_detector="fallback"), upsampler=None, worker_id=worker_id)  # type: ignore[arg-type]


def _publish(stages: Stages, store: Store, request, color: str) -> None:
    task = Task.claimed(request, BatchLease(store, stages.worker_id, [request.id], lease_s=30), time.time())
    task.prompt = task.spec.prompt
    stages.publish(task, Image.new("RGB", (64, 64), color), stopped=False, engine_ms=1.0, batch_size=1)


def test_a_stale_worker_cannot_overwrite_or_delete_the_owners_result(claimed) -> None:
    store, blobs, _, first = claimed
    # w1's lease lapses; the request is requeued and w2 runs it again (attempt 2) and finishes.
    store.requeue_stalled(3, now=time.time() + 60)
    [second] = store.claim_batch("w2", ["tiny"], 30, max_batch=1)
    assert second.attempts == 2
    _publish(_stages(store, blobs, "w2"), store, second, "blue")
    # Then w1 comes back from its stall and publishes what it made.
    _publish(_stages(store, blobs, "w1"), store, first, "red")
    done = store.get_request(first.id)
    assert done.status == Status.SUCCESS and done.outcome["media"][0]["key"] == result_key(first.id, 2, 0, "png")
    import io

    stored = Image.open(io.BytesIO(blobs.get(result_key(first.id, 2, 0, "png"))))
    assert stored.getpixel((0, 0)) == (0, 0, 255)  # w2's image, untouched
    assert not (blobs.root / result_key(first.id, 1, 0, "png")).exists()  # w1 cleaned up only its own


def test_a_cancel_accepted_while_the_image_is_stored_ends_cancelled(claimed) -> None:
    store, blobs, key, request = claimed
    store.cancel_request(request.id, key.id)  # the worker's lease has not seen it yet
    _publish(_stages(store, blobs, "w1"), store, request, "red")
    ended = store.get_request(request.id)
    assert ended.status == Status.CANCELLED and ended.outcome["error"]["code"] == "cancelled"
    assert not (blobs.root / result_key(request.id, 1, 0, "png")).exists()  # no orphaned image
