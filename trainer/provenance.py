"""What a run was made from, saved in the run folder before the first step."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.files import atomic_write_text

PACKAGES = ("torch", "pytorch-lightning", "deepspeed", "wandb", "webdataset", "diffusers", "torchmetrics",
            "omegaconf", "numpy", "av", "opencv-python-headless", "safetensors")
SECRET_WORDS = ("key", "token", "secret", "password")


DOCUMENTS = ("README.md", "results", "docs/images")  # what the result tables write into the tree; no run reads them


def changed_files(repo: Path | None = None, ignore: tuple[str, ...] = DOCUMENTS) -> list[str]:
    """The tracked files that differ from HEAD, apart from those under ``ignore`` ([] without git)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", ".",
                              *(f":(exclude){path}" for path in ignore)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.stdout.splitlines()]


def git_commit(repo: Path | None = None) -> str:
    """HEAD, with ``-dirty`` when tracked code differs from it: a change to the DOCUMENTS alone (a table, its numbers,
    a picture) leaves a run clean, as it leaves ``make results`` clean; '' without git."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    commit = out.stdout.strip() if out.returncode == 0 else ""
    return f"{commit}-dirty" if commit and changed_files(repo) else commit


def machine() -> str:
    """The CPU model, core count and GPUs of this machine, as results and benchmarks name it."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "no GPU"
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with any value of a secret-looking key replaced."""
    out = []
    for word in argv:
        key = word.split("=", 1)[0].lower()
        out.append(f"{word.split('=', 1)[0]}=<redacted>" if "=" in word and any(s in key for s in SECRET_WORDS)
                   else word)
    return out


def collect(argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "command": redact_argv(list(argv if argv is not None else sys.argv)),
        "git_commit": git_commit(),
        "git_changed": changed_files(ignore=()),  # every tracked change, documents included
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save(run_dir: str | Path, config_yaml: str, provenance: dict[str, Any]) -> None:
    """``config.yaml`` (resolved) and ``provenance.json``, atomically; earlier ones kept as history on restart."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    history = run_dir / "provenance.jsonl"
    with open(history, "a") as fh:
        fh.write(json.dumps(provenance) + "\n")
    atomic_write_text(run_dir / "provenance.json", json.dumps(provenance, indent=2))
