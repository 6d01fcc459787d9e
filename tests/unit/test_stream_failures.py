"""A training stream over shards that cannot be read stops with an error naming the data root instead of
looking for a readable shard forever; what it skips is counted by samples, with a bounded list of messages."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from datamodules.pipeline import ClipStream
from datamodules.shards import ShardIndex, ShardSetError
from datamodules.skips import MAX_MESSAGES, SkipCounter
from tests.unit.test_shards import shard_set, window  # noqa: F401  (the shard_set fixture)


def unreadable_shards(root: Path) -> list[str]:
    """A Git LFS pointer file where a shard should be, and a shard that is not there at all."""
    (root / "train").mkdir(parents=True)
    pointer = root / "train" / "shard-000000.tar"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4096\n")
    return [str(pointer), str(root / "train" / "shard-000001.tar")]


def first_batch_outcome(loader: DataLoader) -> BaseException | None:
    """What ``next(iter(loader))`` raised, or None if it yielded."""
    try:
        next(iter(loader))
    except Exception as exc:  # the outcome under test
        return exc
    return None


def first_batch_within(stream, seconds: float, workers: int = 0) -> BaseException | None:
    """The first batch's outcome; fails when it is still running after ``seconds``.

    In-process, a helper thread keeps the watch; with workers, the loader's own timeout does, and the workers are
    spawned so that no lock held by another thread of this process at fork time can stop them."""
    if workers:
        outcome = first_batch_outcome(DataLoader(stream, batch_size=None, num_workers=workers, timeout=seconds,
                                                 multiprocessing_context="spawn"))
        assert "timed out" not in str(outcome), f"the first training batch neither came nor failed within {seconds} s"
        return outcome
    outcomes: list[BaseException | None] = []
    thread = threading.Thread(target=lambda: outcomes.append(first_batch_outcome(DataLoader(stream, batch_size=None))),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcomes, f"the first training batch neither came nor failed within {seconds} s"
    return outcomes[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_training_stream_over_unreadable_shards_stops_with_an_error_naming_the_root(tmp_path, workers):
    root = tmp_path / "corpus"
    stream = ClipStream(unreadable_shards(root), window(), 2, train=True, batches=4, shard_counts=[8, 8],
                        root=str(root))
    error = first_batch_within(stream, 60, workers)
    assert isinstance(error, ShardSetError), error
    assert f"data.root={root}" in str(error) and "shard-00000" in str(error) and "pointer" in str(error)


def test_a_good_sample_between_failures_keeps_the_stream_going(shard_set):  # noqa: F811
    """Unreadable shards among readable ones are skipped, however many the stream draws in all."""
    paths = ShardIndex.load(shard_set).shard_paths(shard_set, "train")
    missing = [str(Path(paths[0]).with_name(f"gone-{i}.tar")) for i in range(60)]
    stream = ClipStream([*paths, *missing], window(), 1, train=True, batches=200, shuffle_buffer=1)
    batches = list(stream)
    assert len(batches) == 200
    assert sum(int(b["skipped"]) for b in batches) >= 1000  # more failures in all than the limit in a row


def test_a_failed_shard_counts_as_its_samples_and_messages_are_bounded():
    counter = SkipCounter("/data/corpus", {"/data/corpus/train/a.tar": 40})
    for _ in range(3 * MAX_MESSAGES):
        counter.handler(OSError("No such file", "/data/corpus/train/a.tar"))
    counter.handler(OSError("unknown shard"))
    skipped, messages = counter.take()
    assert skipped == 3 * MAX_MESSAGES * 40 + 1
    assert len(messages) == MAX_MESSAGES and "a.tar" in messages[0]
    assert counter.take() == (0, [])
