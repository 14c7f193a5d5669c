"""A FLUX scheduler whose denoising steps wait for the test's permission: a step gate.

Tests that follow a request through its steps (live events, progress) must not depend on how
fast the machine runs them. A test model (``step_gated_model``) names ``GatedScheduler`` in
its ``model_index.json``; the worker process imports this module at start-up (the
``sitecustomize`` beside it, on ``PYTHONPATH`` for that server only), so diffusers finds it.

The gate is two files, named by ``DARKROOM_TEST_STEP_GATE``: ``<gate>`` holds how many steps
the process may run in all (the test raises it), ``<gate>.reached`` how many it has begun.
A step waits while the two are equal. Without the variable, steps run freely.

diffusers and torch are imported only when diffusers asks for the class, so the API process
(which imports this module too) stays torch-free.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _gated_class() -> type:
    from diffusers import FlowMatchEulerDiscreteScheduler

    class GatedScheduler(FlowMatchEulerDiscreteScheduler):
        begun = 0  # steps begun in this process, by every instance

        def step(self, *args: Any, **kwargs: Any) -> Any:
            gate = os.environ.get("DARKROOM_TEST_STEP_GATE")
            if gate:
                Path(f"{gate}.reached").write_text(str(GatedScheduler.begun))
                while GatedScheduler.begun >= int(Path(gate).read_text() or 0):
                    time.sleep(0.01)  # waits for the test, not for time: no deadline here
            GatedScheduler.begun += 1
            return super().step(*args, **kwargs)

    return GatedScheduler


def __getattr__(name: str) -> Any:
    # diffusers resolves the component's class here, and its base classes (SchedulerMixin, ...)
    if name == "GatedScheduler":
        cls = _gated_class()
        globals()[name] = cls
        return cls
    if name.startswith("__"):
        raise AttributeError(name)
    import diffusers

    return getattr(diffusers, name)
