"""``make demo``: the synthetic corpus, every stage of the chain at the tiny scale, and where things are.

Each step runs as its own process (as a user would run it); re-running continues (resume=auto) instead of
starting over. Stages that are not part of this installation are skipped with a note.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lightning_modules.registry import CHAIN, available_stages

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


def demo_steps(stages: list[str]) -> list[tuple[str, ...]]:
    """The commands of the demo, in order (the prior is computed right after the autoencoder)."""
    steps: list[tuple[str, ...]] = []
    if not (CORPUS / "index.json").is_file():
        steps.append(("prepare", "synthetic", "--out", str(CORPUS)))
    for stage in stages:
        if stage == "codebook":
            steps += [("train", "experiment=tiny", "stage=codebook", f"stage.phase={phase}", f"run.name={phase}")
                      for phase in ("vqgan", "transformer", "render")]
            continue
        steps.append(("train", "experiment=tiny", f"stage={stage}"))
        if stage == "autoencoder":
            stages_dir = OUTPUTS / "tiny" / "stages"
            steps.append(("prior", "--data", str(CORPUS), "--stages", str(stages_dir),
                          "--out", str(stages_dir / "face_prior.safetensors")))
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
    present = set(available_stages())
    stages = [s for s in CHAIN if s in present and s in DEMO_STAGES]
    skipped = [s for s in CHAIN if s not in stages]
    start = time.time()
    for words in demo_steps(stages):
        seespeaker(*words)
    video = None
    if set(CHAIN) <= set(stages):
        speech = held_out_speech(OUTPUTS / "tiny" / "held_out_speech.wav")
        video = OUTPUTS / "tiny" / "demo.mp4"
        seespeaker("generate", "--audio", str(speech), "--stages", str(OUTPUTS / "tiny" / "stages"),
                   "--out", str(video), "--steps", "10", "--save-portrait", str(OUTPUTS / "tiny" / "demo_portrait.png"))
    print(f"\nseespeaker demo finished in {time.time() - start:.0f} s")
    print(f"  corpus:            {CORPUS}/ (index.json, train/val/test shards)")
    for stage in stages:
        for folder in ([f"codebook-{p}" for p in ("vqgan", "transformer", "render")] if stage == "codebook" else [stage]):
            run = OUTPUTS / "tiny" / folder
            print(f"  {folder:20s} run {run}/  checkpoints {run}/checkpoints/  W&B {run}/wandb/  media {run}/media/")
    print(f"  exported stages:   {OUTPUTS / 'tiny' / 'stages'}/")
    if video is not None:
        print(f"  generated video:   {video} (from the speech of held-out speaker, {held_out_speech.speaker})")
    if skipped:
        print(f"  not in this demo:  {', '.join(skipped)}")
    print("  compare runs:      seespeaker runs list outputs/tiny  (W&B: wandb sync outputs/tiny/<stage>/wandb/offline-run-*)")
    return 0


DEMO_STAGES = CHAIN

if __name__ == "__main__":
    sys.exit(main())
