"""Speech -> talking-face video with every exported stage: the ``seespeaker generate`` pipeline.

speech -> speaker embedding (conre) -> SAW prior weight -> portrait (portrait_diffusion + saw) -> motion latents
and frame latents over sliding windows (motion_diffusion) -> decoded frames (autoencoder) -> mouth refinement
(lip_enhancer; its mask from the landmarks the motion latents decode to) -> codebook rendering (codebook) -> mp4
at 25 fps with the input speech muxed in. Each stage is used through its own public functions.

With a given portrait (``--portrait face.png``) the portrait steps are skipped: the face is resized to the size the
motion stage trained at and animated, and only the motion stage's frozen parts (conre, autoencoder) and the video
stages are read. Stage files may hold float16 weights (the shipped demo stages): every file is read as float32.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from common.errors import SeespeakerError
from common.images import to_uint8
from common.media import BackgroundMp4Writer, write_png
from generation.portrait import PortraitGenerator, fit_portrait, load_portrait
from generation.runtime import Autocast, as_float32, autocast, timed, timed_chunks
from generation.speech import FPS, SAMPLE_RATE, GenerationError, load_speech, prepare_speech
from lightning_modules.codebook import CodebookStage
from lightning_modules.lip_enhancer import LipEnhancerStage, refine_video
from lightning_modules.motion_diffusion import MotionDiffusionStage
from lightning_modules.motion_generation import MotionParts, check_generation_inputs, frame_latents, sample_motion
from lightning_modules.registry import FACE_PRIOR, node_file, training_order
from lightning_modules.stagefile import StageFiles

log = logging.getLogger("seespeaker.generate")

PORTRAIT_STAGES = ("conre", "autoencoder", "portrait_diffusion", "saw")
VIDEO_STAGES = ("motion_diffusion", "lip_enhancer", "codebook")
ANIMATION_STAGES = ("conre", "autoencoder")  # the motion stage's frozen speech encoder and VAE


@dataclass
class GenerationOptions:
    """What ``seespeaker generate`` lets a user choose."""

    steps: int = 50                 # portrait sampler steps
    guidance: float = 3.0           # portrait classifier-free guidance scale
    motion_steps: int = 0           # motion sampler steps (0: the stage's own)
    frame_steps: int = 0            # frame-latent sampler steps per frame (0: the stage's own)
    fidelity: float | None = None   # codebook renderer fidelity w (None: the stage's own)
    resolution: int = 0             # output frame size (0: the codebook's output size)
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"         # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16
    batch_frames: int = 16          # frames per batch in the refinement and rendering steps
    use_saw: bool = True
    prior_weight: float | None = None  # fixes the prior weight a (ablations): no SAW, no saw file needed
    codebook: bool = True           # False: stop before the codebook renderer (output the low-res frames)


@dataclass
class GenerationResult:
    """What came out, and how long each step took."""

    video: Path | None
    portrait: Path | None
    frames: int
    seconds: float
    size: int
    timings: dict[str, float] = field(default_factory=dict)


def required_files(stages_dir: Path, portrait_only: bool, use_saw: bool = True,
                   codebook: bool = True, given_portrait: bool = False) -> dict[str, Path]:
    """stage -> file; a missing file is a GenerationError naming it and the commands that make it, in the
    order of the stage graph. With ``given_portrait`` no portrait stage (portrait_diffusion, saw) is needed."""
    names = [s for s in PORTRAIT_STAGES if (use_saw or s != "saw") and (not given_portrait or s in ANIMATION_STAGES)]
    names += [] if portrait_only else [s for s in VIDEO_STAGES if codebook or s != "codebook"]
    files = {name: stages_dir / f"{name}.safetensors" for name in names}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        experiment = stages_dir.resolve().parent.name or "<experiment>"
        lines = [f"{files[n]} (make it with {stage_command(n, experiment, stages_dir)})" for n in missing]
        order = [n for n in training_order(missing) if not (stages_dir / node_file(n)).is_file()]
        raise GenerationError("missing stage file(s) in " + str(stages_dir) + ":\n  " + "\n  ".join(lines)
                              + "\nmissing in the order they train: " + ", ".join(order))
    return files


def stage_command(node: str, experiment: str, stages_dir: Path) -> str:
    """The command that makes ``node``'s file."""
    if node == FACE_PRIOR:
        return f"`seespeaker prior --data <train shards> --stages {stages_dir} --out {stages_dir / node_file(node)}`"
    if node == "codebook":
        return (f"`seespeaker train experiment={experiment} stage=codebook stage.phase=P run.name=P` for P = vqgan, "
                f"transformer, render in turn")
    return f"`seespeaker train experiment={experiment} stage={node}`"


@contextmanager
def stage_file_errors(path: Path) -> Iterator[None]:
    """Turn any failure to load ``path`` into a GenerationError that names it."""
    try:
        yield
    except (SeespeakerError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise GenerationError(f"{path} cannot be used: {exc}. Re-train or re-export that stage "
                              f"(`seespeaker export <run folder>`)") from exc


class TalkingFacePipeline:
    """The exported stages of one stages folder, loaded once, ready to turn speech into video."""

    def __init__(self, stages_dir: str | Path, options: GenerationOptions, portrait_only: bool = False,
                 given_portrait: bool = False):
        """``given_portrait``: the portrait comes from the user (:meth:`given_portrait`), so no portrait stage is
        read."""
        self.stages_dir, self.options = Path(stages_dir), options
        self.device = torch.device(options.device)
        use_saw = options.use_saw and options.prior_weight is None
        self.files = required_files(self.stages_dir, portrait_only, use_saw, options.codebook, given_portrait)
        self.stages = stages = StageFiles(self.stages_dir, needed_by="generation")
        for name, path in self.files.items():  # each file read once, up front: an unreadable one is named
            with stage_file_errors(path):
                as_float32(stages[name])
        self.portraits = None
        if not given_portrait:
            with stage_file_errors(self.files["saw" if use_saw else "portrait_diffusion"]):
                self.portraits = PortraitGenerator(stages, use_saw, options.device, options.prior_weight)
        if not portrait_only:
            self._load_video_stages(stages)

    def _load_video_stages(self, stages: StageFiles) -> None:
        files = self.files
        with stage_file_errors(files["motion_diffusion"]):
            self.motion = MotionDiffusionStage.for_inference(stages)
            for network in (self.motion.motion_encoder, self.motion.motion_denoiser, self.motion.frame_denoiser):
                network.to(self.device)
        with stage_file_errors(files["lip_enhancer"]):
            self.lips = LipEnhancerStage.for_inference(stages)
            self.lips.refiner.to(self.device)
            self.lips.mel.to(self.device)
        self.codebook = None
        if "codebook" in files:
            with stage_file_errors(files["codebook"]):
                self.codebook = CodebookStage.for_inference(stages).to(self.device)

    def animation_size(self) -> int:
        """The portrait size the motion stage animates: the ``data.resolution`` it trained at (its file's
        provenance); for a file without provenance, the codebook renderer's input size; 0 when neither is known."""
        size = self.stages["motion_diffusion"].trained_resolution()
        if not size and self.codebook is not None:
            size = int(self.codebook.cfg.lr_resolution)
        return int(size or 0)

    @contextmanager
    def step(self, timings: dict[str, float], name: str) -> Iterator[None]:
        """Time one step of generation, run under bf16 autocast when the options ask for it."""
        with timed(timings, name), autocast(self.options.precision, self.device):
            yield

    # ---- steps ----------------------------------------------------------------------------------------
    def given_portrait(self, path: str | Path, timings: dict[str, float]) -> torch.Tensor:
        """The user's face image -> [3, R, R] in [-1, 1] at :meth:`animation_size` (antialiased bicubic)."""
        with timed(timings, "load_portrait"):
            portrait = load_portrait(path)
            size, factor = self.animation_size(), self.motion.frozen.downsample
            if not size:  # the UNet is convolutional: any size the VAE divides
                size = portrait.shape[-1]
                if size % factor:
                    raise GenerationError(
                        f"portrait {path} is {size} x {size} px and {self.files['motion_diffusion']} records no "
                        f"training resolution to resize it to; give a portrait whose size is a multiple of {factor} "
                        f"(the VAE's downsampling), e.g. {max(factor, size - size % factor)} x "
                        f"{max(factor, size - size % factor)} px")
            if size != portrait.shape[-1]:
                log.info("portrait %s resized from %d to the motion stage's %d px", path, portrait.shape[-1], size)
            return fit_portrait(portrait, size)

    @torch.no_grad()
    def portrait(self, speech: torch.Tensor, timings: dict[str, float]) -> torch.Tensor:
        """Speech [N] -> portrait [3, R, R] in [-1, 1] (speaker embedding, SAW weight, portrait diffusion)."""
        opts, gen = self.options, self.portraits
        with timed(timings, "speaker_embedding+saw"):
            speech = prepare_speech(speech.numpy(), SAMPLE_RATE)
            source = "fixed" if gen.prior_weight is not None else "SAW" if gen.use_saw else "constant"
            log.info("prior weight a (%s): mean %.3f", source, float(gen.prior_weights(speech[None]).mean()))
        with self.step(timings, "portrait"):
            return gen.generate(speech, opts.steps, opts.guidance, opts.seed).float()

    @torch.no_grad()
    def video(self, portrait: torch.Tensor, speech: torch.Tensor, timings: dict[str, float],
              advance: Callable[[str], None], steps: dict[str, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Portrait + speech [N] -> (low-res frames [T, 3, r, r], final frames [T, 3, S, S]; both in [-1, 1]).

        ``steps``, when given, receives the low-res frames before and after lip enhancement
        (``motion_diffusion``, ``lip_enhancer``), for scoring what each stage adds."""
        chunks = list(self.video_chunks(portrait, speech, timings, advance, steps))
        return torch.cat([low for low, _ in chunks]), torch.cat([final for _, final in chunks])

    def video_chunks(self, portrait: torch.Tensor, speech: torch.Tensor, timings: dict[str, float],
                     advance: Callable[[str], None], steps: dict[str, torch.Tensor] | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`video` chunk by chunk: each chunk of frames is decoded, lip-refined and rendered as soon as its
        windows are, so a consumer (the mp4 writer) works while the next windows render. A chunk is a whole number
        of every step's batches, so the frames are those of a whole-clip run."""
        device = self.device
        parts = self.motion_parts()
        n_frames = int(speech.shape[0] * FPS // SAMPLE_RATE)
        window_samples = parts.cfg.window_frames * SAMPLE_RATE // FPS
        audio = F.pad(speech, (0, max(0, window_samples - speech.shape[0]))).to(device)  # shorter than a window
        check_generation_inputs(parts, portrait, audio.cpu(), float(FPS), SAMPLE_RATE)
        generator = torch.Generator().manual_seed(self.options.seed)
        total = max(n_frames, parts.cfg.window_frames)
        with timed(timings, "motion_latents"):
            features = parts.audio_features(audio[None], total)
            speaker = parts.frozen.speaker(audio[None])
            motion = sample_motion(parts, features, speaker, total, generator)
        advance("motion latents")
        marks = parts.motion_encoder.landmarks(motion[0, :n_frames], portrait.shape[-1])
        portrait, speech = portrait.to(device), speech.to(device)
        latents = frame_latents(parts, parts.frozen.encode(portrait[None]), motion, features, generator)
        seen: dict[str, list[torch.Tensor]] = {"motion_diffusion": [], "lip_enhancer": []}
        done, unit = 0, self.chunk_frames()
        pending: torch.Tensor | None = None
        for made in timed_chunks(latents, timings, "frame_latents"):
            pending = made if pending is None else torch.cat([pending, made])
            ready = min(n_frames - done, len(pending) // unit * unit)
            if ready > 0:
                yield self.finish(parts, pending[:ready], done, marks, speech, portrait, timings, seen)
                pending, done = pending[ready:], done + ready
        if done < n_frames:
            yield self.finish(parts, pending[:n_frames - done], done, marks, speech, portrait, timings, seen)
        for name in ("frame latents", "decoded frames", "lip enhancement", "codebook rendering"):
            advance(name)
        if steps is not None:
            steps.update({name: torch.cat(frames) for name, frames in seen.items()})

    def chunk_frames(self) -> int:
        """Frames per streamed chunk: a multiple of the decoder's, the lip enhancer's and the codebook's batches."""
        batch = self.options.batch_frames
        codebook = 1
        if self.codebook is not None:
            window = self.codebook.cfg.window_frames if self.codebook.cfg.temporal else batch
            codebook = window * max(1, batch // window)
        return math.lcm(batch, max(batch, 8), codebook)

    def finish(self, parts: MotionParts, latents: torch.Tensor, first: int, marks: torch.Tensor,
               speech: torch.Tensor, portrait: torch.Tensor, timings: dict[str, float],
               seen: dict[str, list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame latents from frame ``first`` on -> (decoded, lip-refined frames; codebook-rendered frames)."""
        with timed(timings, "decode"):
            frames = torch.cat([parts.frozen.decode(c) for c in latents.split(self.options.batch_frames)]).float()
        seen["motion_diffusion"].append(frames)
        with self.step(timings, "lip_enhancement"):
            frames = self.refine_lips(frames, marks[first:first + len(frames)], speech, portrait, first).float()
        seen["lip_enhancer"].append(frames)
        with self.step(timings, "codebook_render"):
            output = self.render(frames)
        return frames, output

    def motion_parts(self) -> MotionParts:
        """The motion stage's parts with the user's sampler steps (the loaded config itself stays as trained) and,
        in bf16, its two denoisers run under autocast (the landmark maps and samplers stay fp32)."""
        cfg, opts = self.motion.cfg, self.options
        steps = {"motion_steps": opts.motion_steps or cfg.motion_steps,
                 "frame_steps": opts.frame_steps or cfg.frame_steps}
        parts = dataclasses.replace(self.motion, cfg=dataclasses.replace(cfg, **steps))
        if isinstance(autocast(opts.precision, self.device), nullcontext):
            return parts
        return dataclasses.replace(parts, motion_denoiser=Autocast(parts.motion_denoiser, opts.precision),
                                   frame_denoiser=Autocast(parts.frame_denoiser, opts.precision))

    @torch.no_grad()
    def refine_lips(self, frames, landmarks, speech, portrait, first: int = 0) -> torch.Tensor:
        """Frames ``first`` .. of the video (their landmarks) with their stretch of ``speech`` -> refined frames."""
        per_frame = SAMPLE_RATE // FPS
        step = max(self.options.batch_frames, 8)
        out = []
        for start in range(0, len(frames), step):
            stop = min(len(frames), start + step)
            audio = speech[(first + start) * per_frame: (first + stop) * per_frame]
            audio = F.pad(audio, (0, (stop - start) * per_frame - audio.shape[0]))
            out.append(refine_video(self.lips, frames[start:stop], landmarks[start:stop], audio, portrait))
        return torch.cat(out).clamp(-1, 1)

    @torch.no_grad()
    def render(self, frames: torch.Tensor) -> torch.Tensor:
        """Low-res frames -> [T, 3, S, S] in [-1, 1] through the codebook renderer, resized to ``resolution``."""
        if self.codebook is None:
            return frames.float().cpu()
        lr_size = self.codebook.cfg.lr_resolution
        if frames.shape[-1] != lr_size:
            log.info("resizing frames from %d to the codebook's input size %d", frames.shape[-1], lr_size)
            frames = F.interpolate(frames, size=lr_size, mode="bilinear", antialias=True)
        out = []
        window = self.codebook.cfg.window_frames if self.codebook.cfg.temporal else self.options.batch_frames
        for chunk in frames.split(window * max(1, self.options.batch_frames // window)):
            high = self.codebook.upscale(chunk, self.options.fidelity, self.options.batch_frames)
            size = self.options.resolution
            if size and size != high.shape[-1]:
                high = F.interpolate(high, size=size, mode="bicubic", antialias=True).clamp(-1, 1)
            out.append(high.float().cpu())
        return torch.cat(out)


def generate_video(audio_path: str | Path, stages_dir: str | Path, out: str | Path,
                   options: GenerationOptions | None = None, portrait_only: bool = False,
                   save_portrait: str | Path | None = None, progress=None,
                   portrait: str | Path | None = None) -> GenerationResult:
    """Speech file -> mp4 at ``out`` (or only the portrait PNG). The mp4 appears only when everything succeeded.
    ``portrait``: a face image to animate instead of generating one from the speech."""
    options = options or GenerationOptions()
    out = Path(out)
    if options.resolution and options.resolution % 2:
        raise GenerationError(f"--resolution {options.resolution}: H.264 needs an even frame size")
    if portrait is not None and portrait_only:
        raise GenerationError(f"--portrait {portrait} with --portrait-only leaves nothing to generate: drop "
                              f"--portrait-only to animate that face, or --portrait to generate one from the speech")
    if portrait is not None:
        load_portrait(portrait)  # a bad image fails before any stage file is read
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with timed(timings, "load_audio"):
        speech = torch.from_numpy(load_speech(audio_path))
    with timed(timings, "load_stages"):
        pipeline = TalkingFacePipeline(stages_dir, options, portrait_only, given_portrait=portrait is not None)
    torch.manual_seed(options.seed)
    advance = progress or (lambda name: None)
    face = pipeline.given_portrait(portrait, timings) if portrait is not None else pipeline.portrait(speech, timings)
    advance("portrait")
    portrait_path = Path(save_portrait) if save_portrait else (out.with_suffix(".png") if portrait_only else None)
    if portrait_path is not None:
        write_png(portrait_path, to_uint8(face))
    if portrait_only:
        return GenerationResult(None, portrait_path, 0, time.perf_counter() - start, face.shape[-1], timings)
    count, size = write_video(out, pipeline.video_chunks(face, speech, timings, advance), speech, timings)
    advance("mp4")
    return GenerationResult(out, portrait_path, count, time.perf_counter() - start, size, timings)


def write_video(out: Path, chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], speech: torch.Tensor,
                timings: dict[str, float]) -> tuple[int, int]:
    """Stream the final frames of ``chunks`` into the mp4 ``out`` with ``speech`` muxed in, encoding in the
    background while the next chunk renders -> (frames, frame size). ``timings["write_mp4"]``: the time the
    pipeline waited for the writer."""
    count = size = 0
    with BackgroundMp4Writer(out, speech.numpy(), fps=FPS, sr=SAMPLE_RATE) as writer:
        for _, frames in chunks:
            with timed(timings, "write_mp4"):
                writer.put(to_uint8(frames))
            count, size = count + len(frames), frames.shape[-1]
        draining = time.perf_counter()
    timings["write_mp4"] = timings.get("write_mp4", 0.0) + time.perf_counter() - draining
    return count, size
