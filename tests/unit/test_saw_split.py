"""SAW is fitted on speakers the portrait denoiser never trained on: ``data.speaker_part`` '~0/5' and '0/5'."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from datamodules.config import DataConfig, SpeakerPart, parse_speaker_part, speaker_parts_overlap
from datamodules.pipeline import ClipStream, ClipWindow, speaker_index
from datamodules.sample import Clip, ClipMeta, make_key
from datamodules.shards import ShardIndex, ShardSetWriter
from lightning_modules.saw import warn_on_shared_speakers
from lightning_modules.stagefile import StageFile
from trainer.config import compose

RES, FRAMES, SPEAKERS = 16, 2, 15


def clip(speaker: int) -> Clip:
    frames = np.full((FRAMES, RES, RES, 3), 10 * speaker, np.uint8)
    audio = (0.1 * np.sin(np.arange(FRAMES * 640) * 0.05 * (speaker + 1))).astype(np.float32)
    meta = ClipMeta("test", f"spk{speaker}", "vid0", 0, "train", FRAMES, resolution=RES)
    return Clip(make_key("test", f"spk{speaker}", "vid0", 0), frames, audio, np.zeros((FRAMES, 68, 2), np.float32),
                meta)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("speakers")
    with ShardSetWriter(root, "test", shard_size=4) as writer:
        for speaker in range(SPEAKERS):
            writer.write(clip(speaker))
    return ShardIndex.load(root).shard_paths(root, "train")


def speakers_in(shards, part: str) -> set[str]:
    data = DataConfig(resolution=RES, clip_frames=1, audio_seconds=0.1, speaker_part=part)
    stream = ClipStream(shards, ClipWindow.from_config(data), 4, train=True, batches=12, shuffle_buffer=2,
                        speaker_part=data.speaker_part_numbers())
    return {s for batch in stream for s in batch["speaker"]}


@pytest.mark.parametrize("experiment", ["tiny", "small", "paper_stage1"])
def test_the_saw_split_and_the_portrait_split_are_disjoint_speakers(shards, experiment):
    portrait = compose([f"experiment={experiment}", "stage=portrait_diffusion"]).data.speaker_part
    saw = compose([f"experiment={experiment}", "stage=saw"]).data.speaker_part
    assert (portrait, saw) == ("~0/5", "0/5")
    assert not speaker_parts_overlap(portrait, saw) and speaker_parts_overlap(portrait, "")
    everyone = {f"spk{s}" for s in range(SPEAKERS)}
    expected = {s for s in everyone if speaker_index("test", s) % 5 == 0}
    assert 0 < len(expected) < SPEAKERS / 2  # about a fifth of the speakers
    seen_saw, seen_portrait = speakers_in(shards, saw), speakers_in(shards, portrait)
    assert seen_saw == expected and seen_portrait == everyone - expected


@pytest.mark.parametrize(("text", "parsed"), [("0/5", SpeakerPart(0, 5)), ("~0/5", SpeakerPart(0, 5, True)),
                                              ("!2/3", SpeakerPart(2, 3, True)),
                                              (" ~ 1 / 2 ", SpeakerPart(1, 2, True))])
def test_speaker_parts_parse_including_the_complement(text, parsed):
    assert parse_speaker_part(text) == parsed and not DataConfig(speaker_part=text).validate()
    assert str(parsed) == text.strip().replace(" ", "").replace("!", "~")


@pytest.mark.parametrize("text", ["~5/5", "~", "0/5!", "~-1/2", "!!0/2"])
def test_malformed_complements_are_config_errors_that_name_both_forms(text):
    errors = DataConfig(speaker_part=text).validate()
    assert any("data.speaker_part" in e and "'i/n'" in e and "'~i/n'" in e for e in errors), errors


def test_overlap_of_parts_with_different_counts():
    assert not speaker_parts_overlap("0/2", "1/4") and speaker_parts_overlap("0/2", "2/4")
    assert speaker_parts_overlap("~0/5", "~1/5") and not speaker_parts_overlap("~0/1", "")


def portrait_file(part: str | None) -> StageFile:
    provenance = {} if part is None else {"run_config": {"data": {"speaker_part": part}}}
    return StageFile(stage="portrait_diffusion", state={}, provenance=provenance, path="stages/portrait.safetensors")


def test_saw_warns_when_its_speakers_are_the_denoisers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_on_shared_speakers("0/5", portrait_file("~0/5"))
        warn_on_shared_speakers("0/5", portrait_file(None))  # not recorded: nothing to check
    for denoiser_part in ("", "~1/5"):
        with pytest.warns(UserWarning, match=f"speaker_part='0/5'.*stages/portrait.safetensors.*'{denoiser_part}'"):
            warn_on_shared_speakers("0/5", portrait_file(denoiser_part))
