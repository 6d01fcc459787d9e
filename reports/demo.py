"""``make demo``: the synthetic corpus, every stage of the chain at the tiny scale, and where things are.

Each step runs as its own process (as a user would run it); re-running continues (resume=auto) instead of
starting over. The order is the stage graph's (``lightning_modules.registry.training_order``), read with the tiny
configs: every stage after what it loads, the face prior right after the autoencoder it is computed with.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lightning_modules.registry import FACE_PRIOR, STAGES, node_file, training_order
from trainer.config import compose

CORPUS = Path("data/synthetic")
OUTPUTS = Path("outputs")


def seespeaker(*words: str) -> None:
    cmd = [sys.executable, "-m", "trainer.cli", *words]
    print(f"\n$ seespeaker {' '.join(words)}", flush=True)
    start = time.time()
    code = subprocess.call(cmd)
    if code != 0:
        raise SystemExit(f"demo step failed (exit {code}): seespeaker {' '.join(words)}")
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def demo_order() -> list[str]:
    """Every stage and computed node, each after what it needs under the tiny configs."""
    return training_order(tuple(STAGES), lambda stage: compose(["experiment=tiny", f"stage={stage}"]).stage)


def demo_steps(order: list[str]) -> list[tuple[str, ...]]:
    """The commands of the demo, one or more per node of ``order``."""
    steps: list[tuple[str, ...]] = []
    if not (CORPUS / "index.json").is_file():
        steps.append(("prepare", "synthetic", "--out", str(CORPUS)))
    stages_dir = OUTPUTS / "tiny" / "stages"
    for node in order:
        if node == FACE_PRIOR:
            steps.append(("prior", "--data", str(CORPUS), "--stages", str(stages_dir),
                          "--out", str(stages_dir / node_file(node))))
        elif node == "codebook":
            steps += [("train", "experiment=tiny", "stage=codebook", f"stage.phase={phase}", f"run.name={phase}")
                      for phase in ("vqgan", "transformer", "render")]
        else:
            steps.append(("train", "experiment=tiny", f"stage={node}"))
    return steps


def held_out_speech(path: Path) -> Path:
    """The speech of the first test-split clip (a speaker no stage trained on), as a wav file."""
    import soundfile as sf
    import webdataset as wds

    from datamodules.sample import decode_audio, decode_meta
    from datamodules.shards import ShardIndex

    shards = ShardIndex.load(CORPUS).shard_paths(CORPUS, "test")
    sample = next(iter(wds.WebDataset(shards, shardshuffle=False)))
    held_out_speech.speaker = decode_meta(sample).speaker
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, decode_audio(sample), 16000)
    return path


held_out_speech.speaker = ""


def main() -> int:
    order = demo_order()
    start = time.time()
    for words in demo_steps(order):
        seespeaker(*words)
    speech = held_out_speech(OUTPUTS / "tiny" / "held_out_speech.wav")
    video = OUTPUTS / "tiny" / "demo.mp4"
    seespeaker("generate", "--audio", str(speech), "--stages", str(OUTPUTS / "tiny" / "stages"),
               "--out", str(video), "--steps", "10", "--save-portrait", str(OUTPUTS / "tiny" / "demo_portrait.png"))
    print(f"\nseespeaker demo finished in {time.time() - start:.0f} s")
    print(f"  corpus:            {CORPUS}/ (index.json, train/val/test shards)")
    for stage in (node for node in order if node in STAGES):
        for folder in ([f"codebook-{p}" for p in ("vqgan", "transformer", "render")] if stage == "codebook"
                       else [stage]):
            run = OUTPUTS / "tiny" / folder
            print(f"  {folder:20s} run {run}/  checkpoints {run}/checkpoints/  W&B {run}/wandb/  media {run}/media/")
    print(f"  exported stages:   {OUTPUTS / 'tiny' / 'stages'}/")
    print(f"  generated video:   {video} (from the speech of held-out speaker, {held_out_speech.speaker})")
    print("  compare runs:      seespeaker runs list outputs/tiny  "
          "(W&B: wandb sync outputs/tiny/<stage>/wandb/offline-run-*)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
