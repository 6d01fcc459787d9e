"""Session fixtures of the distributed tests: the real two-node SLURM cluster."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from slurm_cluster import INSTALL_HINT, missing_programs, start_cluster


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running two-node SLURM cluster (controller + two slurmd in network namespaces) for this session.

    Skipped only when not root; a missing SLURM or munge installation is a failure, because CI runs as root and
    installs them (`apt-get install -y slurm-wlm munge`).
    """
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (network namespaces, slurmd); CI runs these tests as root")
    missing = missing_programs()
    if missing:
        pytest.fail(f"SLURM test cluster: {', '.join(missing)} not installed; run `{INSTALL_HINT}` as root")
    # Not under pytest's tmp folder: munged runs as user munge and must reach its socket folder.
    root = Path(tempfile.mkdtemp(prefix="seespeaker-slurm-"))
    cluster = start_cluster(root)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
