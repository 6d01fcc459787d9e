"""What a shard stream skipped: bad samples and unreadable shards, counted, and a stream that gives up on shards
that are all unreadable instead of looking for a readable one forever."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from datamodules.shards import ShardSetError

MAX_FAILURES_IN_A_ROW = 1000  # unreadable shards or samples without a good sample between them before giving up
MAX_MESSAGES = 20  # skip messages kept per batch (the counts are exact)


class SkipCounter:
    """Counts what a worker skipped; the count since the last yielded sample rides on the next sample.

    A shard that fails counts as the samples of it not read (its ``index.json`` count); messages are kept up to
    ``MAX_MESSAGES`` between two batches (the counts stay exact). ``MAX_FAILURES_IN_A_ROW`` failures without one
    good sample in between stop the stream with a :class:`ShardSetError`: a resampled stream over shards that are
    all unreadable would otherwise never yield.
    """

    def __init__(self, where: str = "", shard_counts: dict[str, int] | None = None) -> None:
        self.pending, self.in_a_row = 0, 0
        self.reasons: dict[str, int] = {}
        self.messages: list[str] = []
        self.where, self.shard_counts = where, shard_counts or {}
        self.url, self.read = "", 0  # the shard being read and the samples read from it so far
        self.failed: set[str] = set()  # shards failed since the last sample read: one may hold a sample

    def add(self, reason: str, message: str, count: int = 1) -> None:
        self.pending += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)
        self.in_a_row += 1
        if self.in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise ShardSetError(
                f"{self.in_a_row} shards or samples in a row under data.root={self.where} could not be read, e.g. "
                f"{message}; check that the shards are complete tar files this job can read (not Git LFS or "
                f"git-annex pointer files, not a truncated copy, not a stale mount) or re-run prepare")

    def good(self) -> None:
        """A sample came through: the run of failures is over."""
        self.in_a_row = 0

    def opening(self, urls: Iterator[str]) -> Iterator[dict[str, str]]:
        """webdataset's source of shards, noting which shard is being read."""
        for url in urls:
            self.url, self.read = url, 0
            yield {"url": url}

    def reading(self, sample: dict[str, Any]) -> None:
        """Note a sample read from the tar stream. The sample webdataset held when its shard failed comes after the
        failure, which counted it among the shard's unread samples: it is taken off that count."""
        url = sample.get("__url__")
        if url == self.url:
            self.read += 1
        if url in self.failed and self.pending > 0:
            self.pending -= 1
            self.reasons["shard"] -= 1
        self.failed.clear()

    def handler(self, exc: Exception) -> bool:
        """webdataset error handler: count an unreadable shard (as its unread samples) or tar member, continue."""
        url = next((a for a in reversed(exc.args) if isinstance(a, str) and a in self.shard_counts), "")
        unread = self.shard_counts.get(url, 1) - (self.read if url == self.url else 0)
        self.add("shard", f"{type(exc).__name__}: {exc}", max(1, unread))
        self.failed.add(url)
        return True

    def take(self) -> tuple[int, list[str]]:
        """(samples skipped since the last call, their messages)."""
        pending, messages = self.pending, self.messages
        self.pending, self.messages = 0, []
        return pending, messages
