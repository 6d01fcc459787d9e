"""A real-layout corpus end to end: HDTF-layout videos made from a real photo (as the preparation tests make them) are
prepared into shards, every stage of the chain trains a few steps on those shards in the stage graph's order (the
face prior after the autoencoder, the codebook phase by phase), and `seespeaker generate` turns held-out speech
into an mp4 from the exported stages. It proves that nothing in the chain depends on the synthetic corpus (its
motion truth, its sizes, its speaker names)."""
from __future__ import annotations

import numpy as np
import soundfile as sf

from common.media import read_mp4
from datamodules.prepare import testmedia as tm
from datamodules.shards import ShardIndex
from lightning_modules.registry import FACE_PRIOR, STAGES, node_file
from reports.demo import demo_order
from trainer.cli import main

SPEAKERS = ("AdamSchiff", "BarbaraLee", "CoryBooker", "DebHaaland", "EliseStefanik", "FrankPallone")
FEW_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
             "trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_minutes=0", "tracking=disabled",
             "data.batch_size=2", "data.num_workers=0"]


def test_prepared_real_layout_shards_train_every_stage_and_generate(tmp_path):
    source, data, runs = tmp_path / "HDTF", tmp_path / "data" / "hdtf", tmp_path / "outputs"
    (source / "videos").mkdir(parents=True)
    for seed, name in enumerate(SPEAKERS):
        tm.write_video(source / "videos" / f"{name}0.mp4", 3.0, seed=seed)
    (source / "RD_annotion_time.txt").write_text("".join(f"{name}0.mp4 00:00-00:03\n" for name in SPEAKERS))
    assert main(["prepare", "hdtf", "--root", str(source), "--out", str(data), "--clip-seconds", "0",
                 "--val-fraction", "0.34", "--test-fraction", "0.34", "--shard-size", "2", "--no-progress"]) == 0
    index = ShardIndex.load(data)
    assert all(index.shard_paths(data, split) for split in ("train", "val", "test"))
    stages = runs / "tiny" / "stages"
    common = [f"data.root={data}", f"experiment.output_root={runs}", *FEW_STEPS]
    for node in demo_order():
        if node == FACE_PRIOR:
            assert main(["prior", "--data", str(data), "--stages", str(stages),
                         "--out", str(stages / node_file(node))]) == 0
        elif node == "codebook":
            for phase in ("vqgan", "transformer", "render"):
                assert main(["train", "experiment=tiny", "stage=codebook", f"stage.phase={phase}",
                             f"run.name={phase}", *common]) == 0, phase
        else:
            assert main(["train", "experiment=tiny", f"stage={node}", *common]) == 0, node
    assert all((stages / f"{stage}.safetensors").is_file() for stage in STAGES)
    speech = tmp_path / "speech.wav"
    sf.write(speech, tm.speech(2.0, seed=99), 16000)
    video = tmp_path / "talk.mp4"
    assert main(["generate", "--audio", str(speech), "--stages", str(stages), "--out", str(video),
                 "--steps", "2", "--save-portrait", str(tmp_path / "portrait.png")]) == 0
    frames, audio = read_mp4(video)[:2]
    assert len(frames) == 50 and frames.dtype == np.uint8 and frames.std() > 0
    assert 32000 <= len(audio) < 32000 + 1024  # the speech, padded to whole AAC frames of 1024 samples
    assert (tmp_path / "portrait.png").is_file()
