"""Where a long evaluation stands, so that a stopped one (a preempted allocation, a killed job) resumes at its next
chunk instead of from the start: the state after the last finished chunk, saved atomically beside the evaluation's
cache with the evaluation's key, and used again only under the same key (the same code and input files).

The state is plain data (numbers, strings, lists, dicts) and tensors; it is written with ``torch.save`` and read
with ``weights_only=True``, the plain data as one JSON text."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch

from common.files import atomic_write_bytes


class ChunkProgress:
    """The progress file of one evaluation: ``resume()`` gives (chunks done, data, tensors) saved under the same
    key, or None; ``save(...)`` records them after a chunk; ``clear()`` removes the file once the result is cached."""

    def __init__(self, path: Path, key: dict):
        self.path, self.key = Path(path), json.dumps(key, sort_keys=True)
        self.started, self.earlier = time.time(), 0.0
        self._loaded: dict | None = None

    def seconds(self) -> float:
        """Wall time of the evaluation so far, the runs before a resume included."""
        return self.earlier + time.time() - self.started

    def _load(self) -> dict | None:
        """The progress file as saved, read once (the plan's description and the resume share it); None without
        one."""
        if self._loaded is None and self.path.is_file():
            self._loaded = torch.load(self.path, map_location="cpu", weights_only=True)
        return self._loaded

    def resume(self) -> tuple[int, dict, dict[str, torch.Tensor]] | None:
        saved, self._loaded = self._load(), None  # its tensors go to the evaluation
        if saved is None:
            return None
        if saved.get("key") != self.key:
            print(f"~ {self.path}: saved under another key (the code or an input changed); the evaluation starts "
                  f"over", flush=True)
            return None
        self.earlier = float(saved["seconds"])
        print(f"= {self.path}: the evaluation resumes after chunk {saved['chunks']} ({self.earlier / 60:.0f} min "
              f"done)", flush=True)
        return saved["chunks"], json.loads(saved["data"]), saved["tensors"]

    def describe(self) -> str:
        """What the progress file would do to the evaluation, for the plan ("" without one)."""
        saved = self._load()
        if saved is None:
            return ""
        if saved.get("key") != self.key:
            return f"; {self.path.name} was saved under another key and is not used"
        return f"; it resumes after chunk {saved['chunks']} of {self.path.name} ({saved['seconds'] / 60:.0f} min done)"

    def save(self, chunks: int, data: dict, tensors: dict[str, torch.Tensor]) -> None:
        buffer = io.BytesIO()
        torch.save({"key": self.key, "chunks": chunks, "seconds": self.seconds(), "data": json.dumps(data),
                    "tensors": tensors}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
