"""Speech -> video at the tiny scale on the CPU: frames/s of the output video and seconds per pipeline step.

The stages come from ``outputs/tiny/stages`` when the demo has trained all of them, else they are built untrained
from the tiny configs (bench/untrained_stages.py: the demo's network shapes); speed does not depend on the weights.
Sampler steps are the tiny experiment's (portrait 10, motion 10, frame latents 5 per frame). A second table times the
codebook renderer alone (64 -> 256 px) by batch.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench.common import write_report
from generation.pipeline import (
    PORTRAIT_STAGES,
    VIDEO_STAGES,
    GenerationOptions,
    TalkingFacePipeline,
    write_video,
)
from generation.runtime import timed
from generation.speech import load_speech

SECONDS = 4.0
DEMO_STAGES = Path("outputs/tiny/stages")


def stages_folder(scratch: Path) -> tuple[Path, str]:
    if all((DEMO_STAGES / f"{n}.safetensors").is_file() for n in PORTRAIT_STAGES + VIDEO_STAGES):
        return DEMO_STAGES, "trained tiny demo stages"
    from bench.untrained_stages import TINY, build_untrained_stages
    return build_untrained_stages(scratch / "stages", TINY), "untrained stages built from the tiny configs"


def speech_file(path: Path, seconds: float = SECONDS) -> Path:
    """A voiced, amplitude-modulated tone of ``seconds`` at 16 kHz (speed does not depend on the words)."""
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2).astype(np.float32), 16000)
    return path


def pipeline_row(stages: Path, scratch: Path, options: GenerationOptions, seconds: float = SECONDS) -> dict:
    """Generate ``seconds`` of speech with ``options``: output frames/s, the time to the first written frame and
    seconds per pipeline step (the steps ``seespeaker generate`` runs, timed from after the stages are loaded)."""
    timings: dict[str, float] = {}
    with timed(timings, "load_stages"):
        pipeline = TalkingFacePipeline(stages, options)
    start, arrivals = time.perf_counter(), []

    def arriving(chunks):
        for chunk in chunks:
            arrivals.append(time.perf_counter() - start)
            yield chunk

    with timed(timings, "load_audio"):
        speech = torch.from_numpy(load_speech(speech_file(scratch / "speech.wav", seconds)))
    face = pipeline.portrait(speech, timings)
    frames, size = write_video(scratch / "bench.mp4", arriving(pipeline.video_chunks(face, speech, timings,
                                                                                     lambda name: None)),
                               speech, timings)
    generating = time.perf_counter() - start
    row = {"steps": f"{options.steps}/{options.motion_steps}/{options.frame_steps}", "frames": frames,
           "size": size, "seconds": round(generating, 2), "video_fps": round(frames / generating, 2),
           "realtime_factor": round(seconds / generating, 3), "s_first_frame": round(arrivals[0], 2)}
    row.update({f"s_{k}": round(v, 3) for k, v in timings.items()})
    return row


def renderer_rows(stages: Path, device: str = "cpu", batches: tuple[int, ...] = (1, 8, 16),
                  frames: int = 32) -> list[dict]:
    """The codebook renderer alone: frames/s by batch size, after a warm-up batch."""
    from lightning_modules.codebook import CodebookStage
    from lightning_modules.stagefile import StageFiles
    codebook = CodebookStage.for_inference(StageFiles(stages)).to(device)
    size, rows = codebook.cfg.lr_resolution, []
    for batch in batches:
        inputs = torch.rand(frames, 3, size, size, device=device) * 2 - 1
        codebook.upscale(inputs[:batch], batch_frames=batch)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        codebook.upscale(inputs, batch_frames=batch)
        synchronize(device)
        elapsed = time.perf_counter() - start
        rows.append({"batch_frames": batch, "frames": frames, "size": codebook.cfg.hr_resolution,
                     "seconds": round(elapsed, 3), "frames_s": round(frames / elapsed, 2), "phase": codebook.cfg.phase})
    return rows


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with tempfile.TemporaryDirectory(prefix="seespeaker-bench-") as tmp:
        scratch = Path(tmp)
        stages, source = stages_folder(scratch)
        row = pipeline_row(stages, scratch, GenerationOptions(steps=10, motion_steps=10, frame_steps=5, seed=0))
        renderer = renderer_rows(stages)
    load = os.getloadavg()[0]
    notes = (f"load average {load:.1f} on {os.cpu_count()} cores during the run; stages: {source}; "
             f"{SECONDS:g} s of speech -> {row['frames']} frames at 25 fps, {row['size']} px; "
             f"seconds exclude loading the stages (s_load_stages); video_fps = output frames per second of "
             f"generation. Codebook renderer alone: " + ", ".join(f"batch {r['batch_frames']}: {r['frames_s']} "
                                                                  f"frames/s" for r in renderer))
    write_report("generate", [row], list(row), notes=notes)


if __name__ == "__main__":
    main()
