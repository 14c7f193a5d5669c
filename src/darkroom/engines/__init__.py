"""Engines: what turns a batch of jobs into images (see ``base.Engine``).

Torch-free on import: the API process imports this package (and ``registry``) for model
info, so engine modules that need torch are imported only by ``create_engine``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from darkroom.errors import EngineError

if TYPE_CHECKING:
    from darkroom.engines.base import Engine
    from darkroom.engines.registry import ModelSpec
    from darkroom.engines.residency import SharedComponents

__all__ = ["ENGINES", "create_engine"]

#: Engine names a registry entry may give, as ``engine = "..."`` ("flux" is read as "diffusers").
ENGINES = ("diffusers",)


def create_engine(spec: ModelSpec, device: str | None = None, *, shared: SharedComponents | None = None) -> Engine:
    """A new, not yet loaded engine for ``spec`` (call ``load()`` before use, or let ``generate`` do it).

    Args:
        spec: the registry entry.
        device: a torch device string; default CUDA when available, else CPU.
        shared: components (text encoders) shared with the other engines given the same one;
            None: the engine loads its own.

    Raises:
        EngineError(code="model_unavailable"): unknown engine, or invalid engine options.
    """
    if spec.engine == "diffusers":
        from darkroom.engines.diffusers_engine import DiffusersEngine

        return DiffusersEngine(spec, device=device, shared=shared)
    raise EngineError(f"model {spec.id!r}: unknown engine {spec.engine!r}; known: {', '.join(ENGINES)}",
                      code="model_unavailable")
