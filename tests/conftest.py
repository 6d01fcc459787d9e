"""Session fixtures shared by every tier: the synthetic corpus, built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """The tiny synthetic corpus (16 speakers x 4 clips x 2 s at 256 px), written once per session."""
    from datamodules.synthetic import SyntheticConfig, write_synthetic_corpus

    root = tmp_path_factory.mktemp("corpus") / "synthetic"
    write_synthetic_corpus(root, SyntheticConfig(speakers=16, clips_per_speaker=4, seconds=2.0, seed=0, shard_size=16))
    return root
