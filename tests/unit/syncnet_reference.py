"""The reference SyncNet code of syncnet-python 0.2.3 (installed with --no-deps), the oracle of the LSE tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def load_reference_module(name: str):
    """A module of the installed syncnet-python package, loaded by path (its __init__ needs ffmpeg)."""
    spec = importlib.util.find_spec("syncnet_python")
    assert spec is not None, "syncnet-python is missing: pip install --no-deps syncnet-python==0.2.3"
    path = Path(spec.submodule_search_locations[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"reference_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
