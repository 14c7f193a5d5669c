"""The residency manager (darkroom.engines.residency) over real tiny FLUX pipelines: sizes from
their real tensors, eviction under a budget in least-recently-used order, a text encoder
shared by two pipelines loaded once, out-of-memory recovery. CPU here; the ``gpu`` test checks
the moves and the measured sizes on a GPU."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import pytest

from darkroom.engines.residency import (
    ComponentKey,
    Residency,
    SharedComponents,
    default_budget,
    estimate_weights_bytes,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny FLUX pipelines with different weights."""
    from darkroom.testing.tiny_pipeline import build_tiny_flux

    root = tmp_path_factory.mktemp("residency")
    return {name: build_tiny_flux(root / name, seed=seed) for seed, name in enumerate(("a", "b", "c"))}


class TinyEngine:
    """A real engine in miniature: loads a saved pipeline with diffusers onto ``device``; with
    ``shared``, both text encoders come from ``encoder_folder`` through the shared cache."""

    def __init__(self, model_id: str, folder: Path, residency: Residency | None = None, *,
                 shared: SharedComponents | None = None, encoder_folder: Path | None = None) -> None:
        self.model_id = model_id
        self.folder = folder
        self.residency = residency
        self.shared = shared
        self.encoder_folder = encoder_folder
        self.loads = 0
        self.resident_at_load: list[str] = []
        self._pipe: Any = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipeline(self) -> Any:
        return self._pipe

    def load(self) -> None:
        from diffusers import FluxPipeline
        from transformers import BertModel

        if self._pipe is not None:
            return
        if self.residency is not None:
            self.resident_at_load = self.residency.resident()
        device = self.residency.device if self.residency is not None else torch.device("cpu")
        components = {}
        if self.shared is not None:
            for slot in ("text_encoder", "text_encoder_2"):
                key = ComponentKey.of_folder(self.encoder_folder, slot, torch.float32, device)
                components[slot] = self.shared.get(
                    key, lambda slot=slot: BertModel.from_pretrained(str(self.encoder_folder), subfolder=slot))
        pipe = FluxPipeline.from_pretrained(str(self.folder), **components)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe.to(device)
        self.loads += 1

    def close(self) -> None:
        self._pipe = None


def tensor_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules, counted here independently."""
    seen = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for t in (*component.parameters(), *component.buffers()):
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def sizes(folders: dict[str, Path]) -> dict[str, int]:
    out = {}
    for name, folder in folders.items():
        engine = TinyEngine(name, folder)
        engine.load()
        out[name] = tensor_bytes(engine.pipeline)
    return out


def test_sizes_come_from_the_real_tensors(folders: dict[str, Path]) -> None:
    residency = Residency("cpu")
    engine = TinyEngine("a", folders["a"], residency)
    residency.use(engine)
    pipe = engine.pipeline
    assert residency.model_bytes("a") == tensor_bytes(pipe) == residency.used_bytes() > 0
    # The headers of the saved weights give what loading will hold (in the dtype asked for).
    saved = sum(t.numel() * t.element_size() for c in pipe.components.values()
                if isinstance(c, torch.nn.Module) for t in c.state_dict().values())
    assert estimate_weights_bytes(folders["a"]) == saved
    assert estimate_weights_bytes(folders["a"], itemsize=2) == saved // 2  # all float32, as bf16


def test_unlimited_on_cpu_by_default() -> None:
    assert Residency("cpu").budget_bytes is None and default_budget("cpu") is None
    assert default_budget("cpu", 1.5) == 1.5 * 2**30
    with pytest.raises(ValueError):
        Residency("cpu", evict="swap")


@pytest.mark.parametrize("policy", ["offload", "drop"])
def test_a_small_budget_evicts_the_least_recently_used(folders: dict[str, Path], policy: str) -> None:
    size = sizes(folders)
    # Room for any two of the three, not all three.
    residency = Residency("cpu", budget_bytes=size["a"] + size["b"] + size["c"] - 1, evict=policy)
    a, b, c = (TinyEngine(name, folders[name], residency) for name in "abc")
    for engine in (a, b, a):  # a is now more recent than b
        residency.use(engine)
    assert residency.resident() == ["b", "a"]
    residency.use(c)
    assert residency.resident() == ["a", "c"]  # b, the least recently used, made room
    assert residency.used_bytes() == size["a"] + size["c"] <= residency.budget_bytes
    assert b.loaded is (policy == "offload")  # offloaded: still in CPU memory; dropped: closed
    residency.use(b)
    assert residency.resident() == ["c", "b"]
    assert b.loads == (1 if policy == "offload" else 2)
    assert residency.model_bytes("b") == size["b"]


def test_the_estimate_makes_room_before_loading(folders: dict[str, Path]) -> None:
    size = sizes(folders)
    estimate = estimate_weights_bytes(folders["b"])  # the saved weights: less than all b's buffers
    residency = Residency("cpu", budget_bytes=size["a"] + estimate - 1)
    a, b = TinyEngine("a", folders["a"], residency), TinyEngine("b", folders["b"], residency)
    residency.use(a)
    residency.use(b, estimate_bytes=estimate)
    assert b.resident_at_load == []  # a was evicted before b loaded
    assert residency.resident() == ["b"]


def test_without_an_estimate_room_is_made_after_loading(folders: dict[str, Path]) -> None:
    size = sizes(folders)
    residency = Residency("cpu", budget_bytes=size["a"] + size["b"] - 1)
    a, b = TinyEngine("a", folders["a"], residency), TinyEngine("b", folders["b"], residency)
    residency.use(a)
    residency.use(b)
    assert b.resident_at_load == ["a"] and residency.resident() == ["b"]


def test_a_model_over_the_budget_alone_still_loads(folders: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    residency = Residency("cpu", budget_bytes=1)
    a, b = TinyEngine("a", folders["a"], residency), TinyEngine("b", folders["b"], residency)
    residency.use(a)
    with caplog.at_level(logging.WARNING, logger="darkroom.engines.residency"):
        residency.use(b)
    assert residency.resident() == ["b"]
    assert "over the" in caplog.text and "budget" in caplog.text


def test_shared_text_encoders_load_once(folders: dict[str, Path]) -> None:
    shared = SharedComponents()
    size = sizes(folders)
    residency = Residency("cpu")
    a = TinyEngine("a", folders["a"], residency, shared=shared, encoder_folder=folders["c"])
    b = TinyEngine("b", folders["b"], residency, shared=shared, encoder_folder=folders["c"])
    residency.use(a)
    residency.use(b)
    encoder, encoder_2 = a.pipeline.text_encoder, a.pipeline.text_encoder_2
    assert b.pipeline.text_encoder is encoder and b.pipeline.text_encoder_2 is encoder_2
    assert shared.loads == 2  # one per slot, not per pipeline
    assert residency.users(encoder) == ["a", "b"]
    # Evicting a to CPU memory would move its own modules, not the encoders b uses too.
    assert {id(c) for c in residency.movable("a")} == {id(a.pipeline.transformer), id(a.pipeline.vae)}
    encoders = tensor_bytes(type("P", (), {"components": {"1": encoder, "2": encoder_2}})())
    # Counted once on the device although two pipelines hold them.
    assert residency.used_bytes() == tensor_bytes(a.pipeline) + tensor_bytes(b.pipeline) - encoders
    assert residency.model_bytes("a") == tensor_bytes(a.pipeline) and size["a"] > 0
    residency.evict("a")  # to CPU memory: its transformer and VAE; the encoders stay, b uses them
    assert residency.resident() == ["b"] and residency.used_bytes() == tensor_bytes(b.pipeline)
    assert encoder in residency.movable("b")  # b is now their only resident user...
    assert encoder not in residency.movable("b", for_model="a")  # ...but making room for a leaves them


def test_dropping_keeps_a_shared_encoder_until_its_last_user_goes(folders: dict[str, Path]) -> None:
    shared = SharedComponents()
    residency = Residency("cpu", evict="drop")
    a = TinyEngine("a", folders["a"], residency, shared=shared, encoder_folder=folders["c"])
    b = TinyEngine("b", folders["b"], residency, shared=shared, encoder_folder=folders["c"])
    residency.use(a)
    residency.use(b)
    encoder = b.pipeline.text_encoder
    assert {id(c) for c in residency.movable("b")} == {id(b.pipeline.transformer), id(b.pipeline.vae)}
    residency.evict("a")
    assert not a.loaded and residency.users(encoder) == ["b"] and len(shared.live()) == 2
    assert encoder in residency.movable("b")  # b is now its only user
    image = b.pipeline(prompt="a red circle", width=64, height=64, num_inference_steps=1,
                       max_sequence_length=16).images[0]  # b still runs with the shared encoder
    assert image.size == (64, 64)
    residency.use(a)  # loads again, getting the live encoder rather than a new copy
    assert a.pipeline.text_encoder is encoder and shared.loads == 2
    del encoder, image
    residency.evict("a")
    residency.evict("b")
    gc.collect()
    assert shared.live() == []  # no pipeline holds them: freed


def test_on_oom_evicts_every_other_model(folders: dict[str, Path]) -> None:
    residency = Residency("cpu")
    engines = [TinyEngine(name, folders[name], residency) for name in "abc"]
    for engine in engines:
        residency.use(engine)
    assert residency.resident() == ["a", "b", "c"]
    residency.on_oom("b")
    assert residency.resident() == ["b"]
    residency.forget("a")
    residency.use(engines[0])
    assert residency.resident() == ["b", "a"] and engines[0].loads == 1


# -- on CUDA -----------------------------------------------------------------------------------


def cuda_pipeline(seed: int, encoder: Any = None) -> Any:
    """A FLUX pipeline with small random components, built in code (no tokenizer: it is moved,
    not called); ``encoder`` fills both text-encoder slots when given."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    if encoder is None:
        encoder = BertModel(BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=1024))
    transformer = FluxTransformer2DModel(in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=64,
                                         num_attention_heads=4, joint_attention_dim=256, pooled_projection_dim=256,
                                         guidance_embeds=True, axes_dims_rope=(8, 28, 28))
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder, tokenizer=None,
                        text_encoder_2=encoder, tokenizer_2=None, transformer=transformer)


class BuiltEngine(TinyEngine):
    """An engine over a pipeline built in code: load() moves it onto the GPU."""

    def __init__(self, model_id: str, make: Any) -> None:
        super().__init__(model_id, Path("."))
        self._make = make

    def load(self) -> None:
        if self._pipe is None:
            self._pipe = self._make().to("cuda")


@pytest.mark.gpu
def test_on_cuda_eviction_moves_all_but_the_shared_encoder() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    shared = SharedComponents()
    key = ComponentKey.of_package("tiny-bert", torch.float32, "cuda")

    def make(seed: int) -> Any:
        return cuda_pipeline(seed, shared.get(key, lambda: cuda_pipeline(99).text_encoder))

    probe = make(0)
    size = tensor_bytes(probe)
    encoder_bytes = tensor_bytes(type("P", (), {"components": {"e": probe.text_encoder}})())
    del probe
    # Room for both only because they share the encoder (half of it spare, for what loading
    # allocates beyond the weights: the allocator's rounding).
    residency = Residency("cuda", budget_bytes=2 * size - encoder_bytes // 2)
    a, b = BuiltEngine("a", lambda: make(1)), BuiltEngine("b", lambda: make(2))
    residency.use(a)
    assert residency.model_bytes("a") >= size  # weights plus whatever loading allocated beyond them
    residency.use(b)
    assert residency.resident() == ["a", "b"]  # the shared encoder is on the device once: both fit
    a.close(), b.close()
    # Room for one at a time: each load evicts the other to CPU memory.
    tight = Residency("cuda", budget_bytes=size)
    a, b = BuiltEngine("a", lambda: make(1)), BuiltEngine("b", lambda: make(2))
    tight.use(a)
    tight.use(b, estimate_bytes=size - encoder_bytes)  # a leaves before b loads
    assert tight.resident() == ["b"]
    assert a.pipeline.transformer.device.type == "cpu"  # evicted to CPU memory
    assert a.pipeline.text_encoder is b.pipeline.text_encoder
    assert next(a.pipeline.text_encoder.parameters()).device.type == "cuda"  # b still uses it
    before = torch.cuda.memory_allocated()
    tight.use(a)  # back onto the device; b's own components leave
    assert b.pipeline.transformer.device.type == "cpu" and a.pipeline.transformer.device.type == "cuda"
    assert abs(torch.cuda.memory_allocated() - before) < size  # a swap, not an addition
    tight.on_oom("a")
    assert tight.resident() == ["a"]
