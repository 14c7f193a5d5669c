"""Imports the step gate in every process of a server started with this folder on
PYTHONPATH (see ``_darkroom_step_gate``): diffusers resolves a component's class only among
modules already imported."""

import _darkroom_step_gate  # noqa: F401
