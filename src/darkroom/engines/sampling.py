"""Per-job noise for stochastic schedulers.

``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`` re-noises its x0 estimate at every
step: ``x_next = (1 - s_next) * x0 + s_next * fresh_noise``. That sampler forgets its own earlier
errors, which an imperfect model needs (darkroom-mini's deterministic Euler samples break one
object into scattered fragments; the stochastic ones draw one object). But diffusers' Flux
pipelines call ``scheduler.step(...)`` without the call's ``generator``, so the fresh noise comes
from torch's *global* RNG: the same seed would not give the same pixels, and a job's noise would
depend on what else ran before it or beside it in a batch.

``job_generators(pipe, generators)`` makes the scheduler draw from the per-job generators for the
duration of one pipeline call: job k's noise, initial and per-step, all come from its own
generator, so its pixels depend on its seed only. Schedulers without stochastic sampling are left
alone.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch


def is_stochastic(scheduler: Any) -> bool:
    return bool(getattr(scheduler, "config", {}).get("stochastic_sampling", False))


@contextlib.contextmanager
def job_generators(pipe: Any, generators: torch.Generator | Sequence[torch.Generator]) -> Iterator[None]:
    """Within the block, ``pipe.scheduler.step`` draws its noise from ``generators`` (one per image
    of the call, as passed to the pipeline). Not thread-safe: one call per pipeline at a time, as the
    engine already requires."""
    scheduler = pipe.scheduler
    if not is_stochastic(scheduler):
        yield
        return
    gens = list(generators) if isinstance(generators, (list, tuple)) else generators
    step = type(scheduler).step

    def seeded_step(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("generator") is None:
            kwargs["generator"] = gens
        return step(scheduler, *args, **kwargs)

    outer = vars(scheduler).get("step")  # an enclosing job_generators block's hook, restored after
    scheduler.step = seeded_step  # an instance attribute shadows the class method
    try:
        yield
    finally:
        if outer is None:
            del scheduler.step
        else:
            scheduler.step = outer
