"""The typed ``data`` section: which shards, which clip window, how many samples per step."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

SPEAKER_PART_FORMS = "'i/n' (part i of n) or '~i/n' (every part but i)"


class SpeakerPart(NamedTuple):
    """A share of the speakers by a stable speaker id: part ``part`` of ``parts``, or every part but it
    (``exclude``; written ``~i/n``, or ``!i/n`` in a YAML file, where the ``!`` must be quoted)."""

    part: int
    parts: int
    exclude: bool = False

    def holds(self, speaker_id: int) -> bool:
        return (speaker_id % self.parts == self.part) != self.exclude

    def __str__(self) -> str:
        return f"{'~' if self.exclude else ''}{self.part}/{self.parts}"


def parse_speaker_part(text: str) -> SpeakerPart | None:
    """``'i/n'`` or ``'~i/n'`` (``'!i/n'``) as a :class:`SpeakerPart`; None when empty or malformed."""
    match = re.fullmatch(r"\s*([~!]?)\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        return None
    part, parts = int(match.group(2)), int(match.group(3))
    return SpeakerPart(part, parts, bool(match.group(1))) if 0 <= part < parts else None


def speaker_parts_overlap(first: str, second: str) -> bool:
    """Whether two ``data.speaker_part`` values ('' = every speaker) share any speaker id residue."""
    a, b = (parse_speaker_part(text) if text.strip() else SpeakerPart(0, 1) for text in (first, second))
    if a is None or b is None:  # malformed: assume the worst
        return True
    period = a.parts * b.parts // math.gcd(a.parts, b.parts)
    return any(a.holds(r) and b.holds(r) for r in range(period))


@dataclass
class DataConfig:
    """Where the shards are and what one training sample looks like."""

    name: str = field(default="synthetic", metadata={"help": "corpus name (synthetic, hdtf, voxceleb2, avspeech)"})
    root: str = field(default="data/synthetic", metadata={"help": "folder holding index.json and the split folders"})
    train_split: str = field(default="train", metadata={"help": "split used for training"})
    val_split: str = field(default="val", metadata={"help": "split used for validation"})
    resolution: int = field(default=64, metadata={"help": "face size in pixels the reader resizes frames to"})
    clip_frames: int = field(default=1, metadata={"help": "frames per training window (1 for still-image stages)"})
    hr_resolution: int = field(default=0, metadata={"help": "also give frames at this size as hr_frames (codebook "
                               "targets; 0: off)"})
    audio_seconds: float = field(default=2.0, metadata={"help": "seconds of speech per sample for speech encoders"})
    fps: float = field(default=25.0, metadata={"help": "frame rate the shards must have (checked per sample)"})
    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate the shards must have"})
    batch_size: int = field(default=8, metadata={"help": "samples per device per step"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per rank"})
    samples_per_epoch: int = field(default=1024, metadata={"help": "samples per rank per epoch (with_epoch)"})
    val_samples: int = field(default=0, metadata={"help": "cap on validation samples per rank (0: the whole split)"})
    shuffle_buffer: int = field(default=256, metadata={"help": "samples held in the shuffle buffer"})
    speaker_part: str = field(default="", metadata={"help": "train only on part i of n of the speakers, 'i/n', or on "
                              "every part but i, '~i/n' (stable hash of the speaker id; e.g. two sync experts on "
                              "disjoint speakers, or the portrait denoiser on '~0/5' and SAW on '0/5'); '' = all"})
    max_skip_fraction: float = field(default=0.01,
                                     metadata={"help": "fail when more than this fraction of samples is bad"})
    pin_memory: bool = field(default=True, metadata={"help": "pin host memory for faster GPU transfers (GPU only)"})

    def validate(self) -> list[str]:
        errors = []
        for name in ("resolution", "clip_frames", "batch_size", "samples_per_epoch"):
            if getattr(self, name) <= 0:
                errors.append(f"data.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            errors.append(f"data.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
        if self.speaker_part and self.speaker_part_numbers() is None:
            errors.append(f"data.speaker_part must be {SPEAKER_PART_FORMS} with 0 <= i < n (e.g. '0/2', '~0/5'), "
                          f"got {self.speaker_part!r}")
        if self.num_workers < 0:
            errors.append(f"data.num_workers must be >= 0, got {self.num_workers}")
        return errors

    def speaker_part_numbers(self) -> SpeakerPart | None:
        """``speaker_part`` as (i, n, exclude); None when it is empty or malformed."""
        return parse_speaker_part(self.speaker_part)
