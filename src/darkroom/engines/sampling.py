"""Per-job noise for stochastic schedulers.

``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`` re-noises its x0 estimate at every
step: ``x_next = (1 - s_next) * x0 + s_next * fresh_noise``. That sampler forgets its own earlier
errors, which an imperfect model needs (darkroom-mini's deterministic Euler samples break one
object into scattered fragments; the stochastic ones draw one object). But diffusers' pipelines
(FLUX, FLUX.2, Qwen-Image, ... as of 0.42) call ``scheduler.step(...)`` without the call's
``generator``, so the fresh noise comes from torch's *global* RNG: the same seed would not give
the same pixels, and a job's noise would depend on what else ran before it or beside it in a batch.

The fix is a scheduler of the same class whose ``step`` defaults its ``generator`` to the ones set
for the current call (``with_job_noise`` swaps it in once, through the pipeline's public
component assignment; ``job_generators`` sets the generators for one call). Job k's noise, initial
and per-step, then comes from its own generator, so its pixels depend on its seed only. Schedulers
without stochastic sampling are left alone (their ``step`` draws no noise).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

_SEEDED_CLASSES: dict[type, type] = {}


def is_stochastic(scheduler: Any) -> bool:
    return bool(getattr(scheduler, "config", {}).get("stochastic_sampling", False))


class _JobNoise:
    """Mixin: ``step`` draws its noise from the generators of the current call, when set."""

    _job_generators: list[torch.Generator] | torch.Generator | None = None

    def step(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("generator") is None and self._job_generators is not None:
            kwargs["generator"] = self._job_generators
        return super().step(*args, **kwargs)  # type: ignore[misc]


def _seeded_class(cls: type) -> type:
    seeded = _SEEDED_CLASSES.get(cls)
    if seeded is None:
        # Same name, so logs and repr read as the scheduler it is; ``step`` is the only difference.
        seeded = type(cls.__name__, (_JobNoise, cls), {"__module__": cls.__module__})
        _SEEDED_CLASSES[cls] = seeded
    return seeded


def with_job_noise(pipe: Any) -> Any:
    """Give ``pipe`` a scheduler that takes per-job generators, if its scheduler is stochastic.

    Idempotent; returns the pipeline's scheduler. The new scheduler is built from the old one's
    config (its per-call state, timesteps and sigmas, is set by every call anyway).
    """
    scheduler = pipe.scheduler
    if not is_stochastic(scheduler) or isinstance(scheduler, _JobNoise):
        return scheduler
    pipe.scheduler = _seeded_class(type(scheduler)).from_config(scheduler.config)
    return pipe.scheduler


@contextlib.contextmanager
def job_generators(pipe: Any, generators: torch.Generator | Sequence[torch.Generator]) -> Iterator[None]:
    """Within the block, a stochastic ``pipe.scheduler`` draws its noise from ``generators`` (one per
    image of the call, as passed to the pipeline). Not thread-safe: one call per pipeline at a time,
    as the engine already requires."""
    scheduler = with_job_noise(pipe)
    if not isinstance(scheduler, _JobNoise):
        yield
        return
    outer = scheduler._job_generators  # an enclosing block's, restored after
    scheduler._job_generators = list(generators) if isinstance(generators, (list, tuple)) else generators
    try:
        yield
    finally:
        scheduler._job_generators = outer
