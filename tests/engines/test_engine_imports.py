"""The API process imports the engine package and the registry; neither may pull in torch."""

from __future__ import annotations

import subprocess
import sys


def test_engines_and_registry_import_without_torch():
    code = (
        "import sys\n"
        "import darkroom.engines, darkroom.engines.registry, darkroom.engines.base\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
