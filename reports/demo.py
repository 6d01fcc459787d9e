"""``make demo``: the synthetic corpus, every stage of the chain at the tiny scale, and where things are; then a
talking face from the shipped demo stages.

Each step runs as its own process (as a user would run it); re-running continues (resume=auto) instead of
starting over. The order is the stage graph's (``lightning_modules.registry.training_order``), read with the tiny
configs: every stage after what it loads, the face prior right after the autoencoder it is computed with. The tiny
chain proves the wiring; training from scratch in minutes does not reach faces, so the demo then generates from the
stage files ``make results`` trained at the small scale and ``make demo-stages`` shipped in ``demo/stages``:
``DEMO_SECONDS`` of speech of the corpus's first test speaker (held out from every stage), synthesised fresh by the
corpus's own generator, at seed 0 and the default settings (SAW on), written as the generated-only mp4, the portrait
PNG and a side-by-side mp4 (generated | the synthesised clip's own frames).
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
SHIPPED = OUTPUTS / "demo"
DEMO_SECONDS = 8.0
PICTURE_FRAMES = 8  # generated frames in outputs/demo/frames.png, one second apart
DEMO_CLIP_INDEX = 80  # a clip index the corpus never wrote (it writes 0 .. clips_per_speaker - 1)


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


def speaker_clip(options: dict, speaker: str, seconds: float, index: int = DEMO_CLIP_INDEX):
    """A fresh ``seconds``-long clip of ``speaker`` (``spkNNN``) made by the synthetic corpus generator with the
    corpus's ``options``: the same speaker draw as the corpus, a clip index it never wrote."""
    import numpy as np

    from datamodules.synthetic import SyntheticConfig, base_layer, draw_speaker, make_clip

    cfg = SyntheticConfig(**{**options, "seconds": seconds})
    number = int(speaker[3:])
    person = draw_speaker(cfg.seed, number, cfg.voice_share)
    base = base_layer(person.face, cfg.resolution, np.random.default_rng([cfg.seed, number, 0]),
                      brows=cfg.version == 1)
    return make_clip(person, base, cfg, index, "test")


def side_by_side(generated: Path, real, out: Path) -> Path:
    """(generated | real) frames at the generated video's size, with the real clip's speech."""
    import numpy as np
    import torch.nn.functional as F

    from common.images import to_uint8, to_unit
    from common.media import read_mp4, write_mp4

    frames = read_mp4(generated)[0]
    size, count = frames.shape[1], min(len(frames), len(real.frames))
    truth = to_uint8(F.interpolate(to_unit(real.frames[:count]), size=(size, size), mode="bicubic",
                                   antialias=True).clamp(-1, 1))
    return write_mp4(out, np.concatenate([frames[:count], truth], axis=2), real.audio, fps=25, sr=16000)


def frames_picture(video: Path, portrait: Path, real, out: Path, count: int = PICTURE_FRAMES) -> Path:
    """Two rows at the generated video's size: the portrait and ``count`` generated frames one second apart; under
    them the real clip's first frame and its frames at the same times."""
    import numpy as np
    import torch
    from PIL import Image

    from common.images import image_grid, to_unit
    from common.media import read_mp4, write_png
    from evaluation.measure import to_measurement_size

    generated = to_unit(read_mp4(video)[0])
    size, times = generated.shape[-1], [min(25 * i, len(generated) - 1) for i in range(count)]
    truth = to_measurement_size(real.frames, size)
    face = to_measurement_size(np.asarray(Image.open(portrait).convert("RGB"))[None], size)
    columns = [torch.cat([face, truth[:1]])] + [torch.stack([generated[t], truth[t]]) for t in times]
    return write_png(out, image_grid(columns))


def shipped_demo() -> list[str]:
    """Generate from the shipped demo stages (the lines to print), or say how to make them."""
    import soundfile as sf

    from reports.demo_stages import DEMO, MANIFEST, STAGES, check_demo_stages
    if not (DEMO / MANIFEST).is_file():
        return [f"  shipped stages:    {DEMO / STAGES}/ is absent: train the small chain with `make results`, then "
                f"`make demo-stages` (then `make demo` again)"]
    manifest = check_demo_stages(DEMO)  # stale files stop the demo with "stale demo stages: run `make demo-stages`"
    corpus = manifest["corpus"]
    speaker = corpus["test_speakers"][0]
    clip = speaker_clip(corpus["options"], speaker, DEMO_SECONDS)
    speech = SHIPPED / f"{speaker}_speech.wav"
    speech.parent.mkdir(parents=True, exist_ok=True)
    sf.write(speech, clip.audio, 16000)
    video, portrait = SHIPPED / "talking_face.mp4", SHIPPED / "portrait.png"
    seespeaker("generate", "--audio", str(speech), "--stages", str(DEMO / STAGES), "--out", str(video),
               "--save-portrait", str(portrait), "--seed", "0")
    both = side_by_side(video, clip, SHIPPED / "side_by_side.mp4")
    picture = frames_picture(video, portrait, clip, SHIPPED / "frames.png")
    measured = measure_demo(video, clip, SHIPPED / "measures.json")
    return [f"  speech:            {speech} ({DEMO_SECONDS:g} s of held-out test speaker {speaker}, synthesised by "
            f"the corpus generator)",
            f"  talking face:      {video} (from the stages in {DEMO / STAGES}/, seed 0, SAW on)",
            f"  portrait:          {portrait}",
            f"  side by side:      {both} (generated | the real clip of {speaker})",
            f"  frames:            {picture} (top: the portrait, then generated frames 1 s apart; bottom: the real "
            f"clip at the same times)",
            f"  measured:          {measured}"]


FACE_RATE_GATE, SYNC_R_GATE, SYNC_MARGIN_GATE = 0.9, 0.3, 0.15


def measure_demo(video: Path, clip, out: Path) -> str:
    """Score the generated-only video by the expert-free measures (:mod:`evaluation.mouth_sync`) next to the real
    clip of the same speech, write them to ``out`` and say whether it shows a talking face (the demo's gates)."""
    import json

    from common.files import atomic_write_text
    from common.media import read_mp4
    from evaluation.mouth_sync import video_mouth_sync
    from evaluation.report import nan_to_none

    frames, audio = read_mp4(video)[0], clip.audio
    generated = video_mouth_sync(frames, audio)
    real = video_mouth_sync(clip.frames, audio)
    passed = (generated["face_rate"] >= FACE_RATE_GATE and generated["r"] >= SYNC_R_GATE
              and generated["margin"] >= SYNC_MARGIN_GATE)
    measures = {"generated": generated, "real": real, "passed": passed,
                "gates": {"face_rate": FACE_RATE_GATE, "r": SYNC_R_GATE, "margin": SYNC_MARGIN_GATE}}
    atomic_write_text(out, json.dumps(nan_to_none(measures), indent=2, allow_nan=False))
    verdict = "a talking face" if passed else (f"below the gates (face >= {FACE_RATE_GATE:.0%}, r >= {SYNC_R_GATE}, "
                                               f"margin >= {SYNC_MARGIN_GATE})")
    return (f"dlib finds a face in {generated['face_rate']:.0%} of the frames; mouth opening vs speech loudness "
            f"r {generated['r']:.2f}, shifted-speech null {generated['null']:.2f} (the real clip: face "
            f"{real['face_rate']:.0%}, r {real['r']:.2f}, null {real['null']:.2f}): {verdict}; {out}")


def main() -> int:
    from reports.demo_stages import DemoStagesError

    order = demo_order()
    start = time.time()
    for words in demo_steps(order):
        seespeaker(*words)
    speech = held_out_speech(OUTPUTS / "tiny" / "held_out_speech.wav")
    video = OUTPUTS / "tiny" / "demo.mp4"
    seespeaker("generate", "--audio", str(speech), "--stages", str(OUTPUTS / "tiny" / "stages"),
               "--out", str(video), "--steps", "10", "--save-portrait", str(OUTPUTS / "tiny" / "demo_portrait.png"))
    try:
        shipped = shipped_demo()
    except DemoStagesError as exc:
        raise SystemExit(str(exc)) from None
    print(f"\nseespeaker demo finished in {time.time() - start:.0f} s")
    print(f"  corpus:            {CORPUS}/ (index.json, train/val/test shards)")
    for stage in (node for node in order if node in STAGES):
        for folder in ([f"codebook-{p}" for p in ("vqgan", "transformer", "render")] if stage == "codebook"
                       else [stage]):
            run = OUTPUTS / "tiny" / folder
            print(f"  {folder:20s} run {run}/  checkpoints {run}/checkpoints/  W&B {run}/wandb/  media {run}/media/")
    print(f"  exported stages:   {OUTPUTS / 'tiny' / 'stages'}/")
    print(f"  tiny-chain video:  {video} (the wiring; from the speech of held-out speaker {held_out_speech.speaker})")
    print("  compare runs:      seespeaker runs list outputs/tiny  "
          "(W&B: wandb sync outputs/tiny/<stage>/wandb/offline-run-*)")
    print("\n".join(shipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
