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

__all__ = ["ENGINES", "create_engine"]

#: Engine names a registry entry may give, as ``engine = "..."`` ("flux" is read as "diffusers").
ENGINES = ("diffusers",)


def create_engine(spec: ModelSpec, device: str | None = None) -> Engine:
    """A new, not yet loaded engine for ``spec`` (call ``load()`` before use, or let ``generate`` do it).

    Args:
        spec: the registry entry.
        device: a torch device string; default CUDA when available, else CPU.

    Raises:
        EngineError(code="model_unavailable"): unknown engine, or invalid engine options.
    """
    if spec.engine == "diffusers":
        from darkroom.engines.diffusers_engine import DiffusersEngine

        return DiffusersEngine(spec, device=device)
    raise EngineError(f"model {spec.id!r}: unknown engine {spec.engine!r}; known: {', '.join(ENGINES)}",
                      code="model_unavailable")
