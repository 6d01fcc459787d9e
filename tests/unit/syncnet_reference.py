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


def random_compact_expert(var_low: float, var_high: float):
    """A tiny random compact sync expert (seed 0) whose batch norms carry random statistics (running variances in
    [var_low, var_high]), so that its scores move with its inputs as a trained expert's do."""
    import torch

    from lightning_modules.nets.syncnet import SyncNetCompact

    torch.manual_seed(0)
    net = SyncNetCompact(embedding_dim=24, width=8)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(var_low, var_high)
    return net.eval()
