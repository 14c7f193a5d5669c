"""Worker fixtures: the PostgreSQL tests use the store tests' throwaway cluster (``pg_cluster``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _store_conftest() -> ModuleType:
    # tests/store/conftest.py is not importable as a module (the tests are not packages), so it
    # is loaded from its path, once, under a name shared with the other folders that need it.
    name = "_darkroom_tests_store_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "store" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


pg_cluster = _store_conftest().pg_cluster
