"""``make results NAMES=codebook``: one seed's evaluation of the codebook renderer (the table:
:mod:`reports.results_codebook`).

The real frames are the first FRAMES_PER_CLIP frames of every test clip; their real 256 px frames are the targets of
two test sets whose 64 px inputs the renderer never trained on (it trains on real frames degraded by
``degrade_frames``):

- ``stage2``, held-out stage-2 frames: each clip re-rendered at 64 px by the seed's motion stage (its default, the
  windowed renderer; :func:`rerender_frames` from the clip's own motion, speech and preceding real frames, seeded);
- ``degraded``, the fixed degraded real set (:mod:`evaluation.degraded`, seed DEGRADED_SEED for every seed, a recipe
  recorded per frame, strengths beyond the training range included).

Rows: bicubic; back-projected bicubic with the bicubic operator (not the corpus's downsampler) and, reported apart,
with the area operator (the corpus's own: an oracle on exact area downsamples); the renderer at each of FIDELITIES
and the stage's default; the temporal variant (its own stage file) at its default. Every row and the target reach
every scorer through :func:`evaluation.measure.to_measurement_size` at MEASURE_SIZE (the ConRe judge's input then
at its training size, through the same function): PSNR / SSIM per frame; temporal consistency and flicker per clip
outside the mouth (:mod:`evaluation.temporal`); Inception features for FID (every frame, PRIMARY rows) and KID
(every STRIDE-th frame, every row); identity to the real frame on every STRIDE-th frame by dlib (aligned by the
corpus landmarks of the real frame, for both) and by the independent ConRe judge; the detail gate's mean
opening or the residual head's mean |detail|.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.images import image_grid, to_uint8, to_unit
from datamodules.datamodule import ShardDataModule
from evaluation.degraded import beyond_training_counts, degrade_real_frames
from evaluation.fid import InceptionFeatures, fid_from_stats
from evaluation.identity import DlibFaceEmbedder
from evaluation.kid import kid, kid_speaker_draws
from evaluation.measure import scale_landmarks, to_measurement_size
from evaluation.temporal import non_mouth_mask, temporal_statistics
from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_parts import back_project
from lightning_modules.conre import ConReStage
from lightning_modules.motion_diffusion import MotionDiffusionStage
from lightning_modules.motion_generation import rerender_frames, truth_gaze
from lightning_modules.stagefile import StageFiles
from reports.measures import frame_scores, inception, stats, unit

FRAMES_PER_CLIP = 16  # 150 test clips x 16 = 2400 frames: FID of the primary rows on >= 2048
CLIPS_PER_CHUNK = 8
MAX_CLIPS: int | None = None  # every test clip
STRIDE = 4  # KID, identity and the other rows' Inception features on every 4th frame (600 of 2400)
KID_SUBSET = 300  # half of the KID frames: the spread over subsets says something
MEASURE_SIZE = 256
DEGRADED_SEED = 2026
FIDELITIES = (0.0, 0.5, 1.0)
DETAIL_SCALES = (1.0,)  # the residual head's detail scales read at the default fidelity besides the stage's own
TEST_SETS = ("stage2", "degraded")
BASE_ROWS = ("bicubic", "back_projected", "back_projected_area")
# what the renderer does inside, per row: the detail gate's mean opening, or the residual head's mean |detail| (on
# the [-1, 1] scale, before the fidelity weight and the detail scale)
INNER = ("gate_opening", "detail")
IMAGE = Path("docs/images/codebook_strip.png")


@dataclass(frozen=True)
class Reading:
    """What one evaluation reads: the table's (every test clip, FID for the primary rows, a temporal variant) or the
    val reading that chooses the render recipe and the default fidelity (reports/codebook_val.py: val clips, FID for
    every row, no temporal variant)."""
    split: str = "test"
    max_clips: int | None = None
    fidelities: tuple[float, ...] = FIDELITIES
    detail_scales: tuple[float, ...] = DETAIL_SCALES
    fid_every_row: bool = False
    kid_subset: int = KID_SUBSET

    def __post_init__(self):
        if self.split not in ("val", "test"):
            raise ValueError(f"the codebook evaluation reads the val or test split, got {self.split!r}")


def table_reading() -> Reading:
    """The table's reading, with MAX_CLIPS and KID_SUBSET as the module holds them now (the tests lower them)."""
    return Reading(max_clips=MAX_CLIPS, kid_subset=KID_SUBSET)


def fidelity_row(w: float) -> str:
    return f"renderer_w{w:g}"


def detail_row(scale: float) -> str:
    """The renderer at its default fidelity with the residual head's detail times ``scale``."""
    return f"renderer_s{scale:g}"


def test_chunks(data, reading: Reading | None = None) -> Iterator[dict]:
    """Chunks of CLIPS_PER_CHUNK clips of the reading's split (FRAMES_PER_CLIP frames, their speech, landmarks and
    gaze truth)."""
    reading = reading or table_reading()
    limit = reading.max_clips
    dm = ShardDataModule(replace(data, num_workers=0, clip_frames=FRAMES_PER_CLIP, batch_size=CLIPS_PER_CHUNK,
                                 audio_seconds=FRAMES_PER_CLIP / data.fps))
    dm.setup()
    seen = 0
    for batch in dm.eval_dataloader(reading.split):
        valid = torch.nonzero(batch["valid"]).flatten()[:None if limit is None else limit - seen]
        if len(valid) == 0:
            continue
        gaze, known = truth_gaze(batch, FRAMES_PER_CLIP)
        picked = valid.tolist()
        yield {"key": [batch["key"][i] for i in picked], "speaker": [batch["speaker"][i] for i in picked],
               **{name: batch[name][valid] for name in ("frames", "hr_frames", "landmarks", "audio")},
               "gaze": None if gaze is None else gaze[valid], "known": None if known is None else known[valid]}
        seen += len(valid)
        if limit is not None and seen >= limit:
            return


class Renderers:
    """The seed's renderer and its temporal variant (when given), with each row's frames at MEASURE_SIZE and what
    the renderer does inside (INNER)."""

    def __init__(self, codebook: Path, temporal: Path | None, reading: Reading | None = None):
        reading = reading or table_reading()
        self.codebook = CodebookStage.for_inference(StageFiles.of(codebook, "codebook"))
        self.temporal = None if temporal is None else CodebookStage.for_inference(StageFiles.of(temporal, "codebook"))
        self.default = self.codebook.cfg.fidelity_weight
        self.fidelities = sorted({*reading.fidelities, self.default})
        own_scale = self.codebook.cfg.detail_scale
        self.detail_scales = sorted({s for s in reading.detail_scales if s != own_scale}
                                    if self.codebook.residual_head is not None else set())
        stages = [self.codebook] + ([] if self.temporal is None else [self.temporal])
        self.rows = [*BASE_ROWS, *map(fidelity_row, self.fidelities), *map(detail_row, self.detail_scales),
                     *(["temporal"] if len(stages) == 2 else [])]
        self.primary = tuple(self.rows) if reading.fid_every_row else ("bicubic", fidelity_row(self.default))
        self._inner: dict[str, list[torch.Tensor]] = {name: [] for name in INNER}
        for stage in stages:
            if stage.detail_gate is not None:
                stage.detail_gate.register_forward_hook(
                    lambda module, *_: self._inner["gate_opening"].append(module.last_opening))
            if stage.residual_head is not None:
                stage.residual_head.net.register_forward_hook(
                    lambda module, args, out: self._inner["detail"].append(out.abs().mean(dim=(1, 2, 3))))

    @torch.no_grad()
    def render(self, stage: CodebookStage, low: torch.Tensor, w: float,
               detail_scale: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Clips [B, T, 3, r, r] -> (frames [B*T, 3, S, S], INNER's means where the stage has them): clip by clip, so
        the temporal variant's windows never span two clips. ``detail_scale`` None: the stage's own."""
        for values in self._inner.values():
            values.clear()
        frames = torch.cat([stage.upscale(clip, w, detail_scale=detail_scale) for clip in low])
        inner = {name: float(torch.cat(values).mean()) for name, values in self._inner.items() if values}
        return to_measurement_size(frames, MEASURE_SIZE), inner

    def outputs(self, low: torch.Tensor) -> Iterator[tuple[str, torch.Tensor, dict[str, float]]]:
        """(row, frames [B*T, 3, S, S] in [-1, 1], INNER's means) of every row for clips [B, T, 3, r, r]."""
        flat = low.flatten(0, 1)
        bicubic = to_measurement_size(flat, MEASURE_SIZE)
        yield "bicubic", bicubic, {}
        yield "back_projected", back_project(bicubic, flat, 1.0, "bicubic").clamp(-1, 1), {}
        yield "back_projected_area", back_project(bicubic, flat, 1.0, "area").clamp(-1, 1), {}
        for w in self.fidelities:
            yield fidelity_row(w), *self.render(self.codebook, low, w)
        for scale in self.detail_scales:
            yield detail_row(scale), *self.render(self.codebook, low, self.default, scale)
        if self.temporal is not None:
            yield "temporal", *self.render(self.temporal, low, self.temporal.cfg.fidelity_weight)

    def training(self) -> dict:
        """What the renderer trained with, for the table (the perceptual network is named there)."""
        cfg = self.codebook.cfg
        return {name: getattr(cfg, name) for name in (
            "perceptual_network", "perceptual_weight", "adversarial", "adversarial_weight", "adversarial_warmup",
            "back_projection_operator", "fidelity_weight", "detail_scale", "shortcut", "detail_gate", "residual_head",
            "degrade", "render_source")} | ({} if self.temporal is None else {
            "temporal_window": self.temporal.cfg.window_frames, "temporal": self.temporal.cfg.temporal})


class IdentityJudges:
    """dlib's face recognition ResNet and the independent ConRe judge's face encoder, both on frames already at
    MEASURE_SIZE (the judge's input then brought to its training size by to_measurement_size)."""

    def __init__(self, judge: Path):
        files = StageFiles.of(judge, "conre")
        self.size = files["conre"].trained_resolution() or 64
        self.face = ConReStage.for_inference(files).face
        self.dlib = DlibFaceEmbedder()

    @torch.no_grad()
    def embed(self, frames: torch.Tensor, marks: np.ndarray) -> dict[str, torch.Tensor]:
        """{"dlib": [n, 128], "conre": [n, E]}, unit length, of frames [n, 3, S, S] aligned by ``marks`` [n, 68, 2]."""
        images = to_uint8(frames)
        dlib = torch.from_numpy(np.stack([self.dlib.embed(i, m) for i, m in zip(images, marks, strict=True)]))
        conre = self.face(to_unit(to_uint8(to_measurement_size(frames, self.size)))).float()
        return {"dlib": F.normalize(dlib.float(), dim=-1), "conre": F.normalize(conre, dim=-1)}


class SetScores:
    """One test set's per-clip metrics, Inception features and gate openings, chunk by chunk."""

    def __init__(self, rows: list[str], primary: tuple[str, ...], judges: IdentityJudges, kid_subset: int):
        self.rows, self.primary, self.judges, self.kid_subset = rows, primary, judges, kid_subset
        self.per_clip: dict[str, dict[str, dict]] = {row: {} for row in rows}
        self.features: dict[str, list[np.ndarray]] = {row: [] for row in rows}
        self.inner: dict[str, dict[str, list[tuple[float, int]]]] = {row: {n: [] for n in INNER} for row in rows}

    def add(self, row: str, frames: torch.Tensor, real: dict, features, inner: dict[str, float]) -> None:
        psnr, ssim = frame_scores(frames, real["target"])
        ids = self.judges.embed(frames[::STRIDE], real["marks"][::STRIDE])
        dlib, conre = ((ids[name] * real["ids"][name]).sum(-1) for name in ("dlib", "conre"))
        per = FRAMES_PER_CLIP // STRIDE
        for c, key in enumerate(real["keys"]):
            clip = slice(c * FRAMES_PER_CLIP, (c + 1) * FRAMES_PER_CLIP)
            self.per_clip[row][key] = {
                "psnr": float(psnr[clip].mean()), "ssim": float(ssim[clip].mean()),
                "identity_dlib": float(dlib[c * per:(c + 1) * per].mean()),
                "identity_conre": float(conre[c * per:(c + 1) * per].mean()),
                **temporal_statistics(frames[clip], real["frames"][clip], real["masks"][clip])}
        self.features[row].append(features(frames if row in self.primary else frames[::STRIDE]))
        for name, value in inner.items():
            self.inner[row][name].append((value, len(frames)))

    def saved(self, prefix: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """The scores so far as plain data and tensors (the Inception features), for :class:`ChunkProgress`."""
        tensors = {f"{prefix}/{row}": torch.from_numpy(np.concatenate(parts))
                   for row, parts in self.features.items() if parts}
        return {"per_clip": self.per_clip, "inner": self.inner}, tensors

    def restore(self, data: dict, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        self.per_clip, self.inner = data["per_clip"], data["inner"]
        self.features = {row: [tensors[f"{prefix}/{row}"].numpy()] if f"{prefix}/{row}" in tensors else []
                         for row in self.rows}

    def finish(self, real_all: np.ndarray, speakers: list[str]) -> dict:
        """Each row's means, KID (every row), FID (PRIMARY rows) and the KID bootstrap draws against bicubic."""
        real_kid = real_all[::STRIDE]
        features = {row: np.concatenate(parts) for row, parts in self.features.items()}
        kid_features = {row: f if row not in self.primary else f[::STRIDE] for row, f in features.items()}
        rows = {}
        for row in self.rows:
            values = list(self.per_clip[row].values())
            rows[row] = {name: float(np.nanmean([v[name] for v in values])) for name in values[0]}
            rows[row].update(per_clip=self.per_clip[row], kid_frames=len(kid_features[row]),
                             kid=kid(real_kid, kid_features[row], subset_size=self.kid_subset),
                             **{name: weighted(values) for name, values in self.inner[row].items()})
            if row in self.primary:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # N < 2048 only in the tests' tiny runs
                    rows[row]["fid"] = fid_from_stats(stats(real_all), stats(features[row])).fid
                rows[row]["fid_frames"] = len(features[row])
        draws = {f"{row}-bicubic": np.round(kid_speaker_draws(real_kid, kid_features[row], kid_features["bicubic"],
                                                              speakers[::STRIDE]), 8).tolist()
                 for row in self.rows if row != "bicubic"}
        return {"rows": rows, "kid_draws": draws}


def weighted(openings: list[tuple[float, int]]) -> float | None:
    return sum(o * n for o, n in openings) / sum(n for _, n in openings) if openings else None


def real_frames(clips: dict, judges: IdentityJudges, resolution: int) -> dict:
    """The chunk's real targets at MEASURE_SIZE, their landmarks, non-mouth masks and identity embeddings."""
    frames = to_measurement_size(clips["hr_frames"].flatten(0, 1), MEASURE_SIZE)
    marks = scale_landmarks(clips["landmarks"].flatten(0, 1).numpy(), resolution, MEASURE_SIZE)
    return {"frames": frames, "target": unit(frames), "marks": marks, "masks": non_mouth_mask(marks, MEASURE_SIZE),
            "keys": clips["key"], "ids": judges.embed(frames[::STRIDE], marks[::STRIDE])}


@dataclass
class Collected:
    """What the chunks so far gave: the sets' scores, the real frames' Inception features, each frame's and each
    clip's speaker, the degraded set's recipes and per-chunk digests; and the stage-2 sampler's generator."""
    scores: dict[str, SetScores]
    generator: torch.Generator
    real_features: list[np.ndarray] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)
    clip_speakers: dict[str, str] = field(default_factory=dict)
    recipes: list[dict] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    def save(self, progress, chunks: int) -> None:
        data = {"speakers": self.speakers, "clip_speakers": self.clip_speakers, "recipes": self.recipes,
                "digests": self.digests, "sets": {}}
        tensors = {"generator": self.generator.get_state(),
                   "real": torch.from_numpy(np.concatenate(self.real_features))}
        for name, set_scores in self.scores.items():
            data["sets"][name], set_tensors = set_scores.saved(name)
            tensors.update(set_tensors)
        progress.save(chunks, data, tensors)

    def resume(self, progress) -> int:
        """How many chunks are done (0 without a progress file under the same key); restores them."""
        saved = None if progress is None else progress.resume()
        if saved is None:
            return 0
        chunks, data, tensors = saved
        self.real_features = [tensors["real"].numpy()]
        self.speakers, self.clip_speakers = data["speakers"], data["clip_speakers"]
        self.recipes, self.digests = data["recipes"], data["digests"]
        for name, set_scores in self.scores.items():
            set_scores.restore(data["sets"][name], tensors, name)
        self.generator.set_state(tensors["generator"])
        return chunks


def evaluate_codebook(stages: Path, temporal: Path | None, judge: Path, data, seed: int, extractor=None,
                      feature_cache: Path | None = None, reading: Reading | None = None, progress=None) -> dict:
    """Both test sets' rows for one seed (the val split's with a val ``reading``): the renderer in ``stages`` (with
    its motion stage), the temporal variant in ``temporal`` (None: no such row), identity by the ConRe ``judge``;
    ``extractor`` replaces the packaged Inception (tests); ``progress`` (a :class:`reports.progress.ChunkProgress`)
    saves the state after every chunk and resumes after the last one saved."""
    from reports.results import OUTPUT_ROOT
    reading = reading or table_reading()
    if FRAMES_PER_CLIP % STRIDE:
        raise ValueError(f"FRAMES_PER_CLIP={FRAMES_PER_CLIP} must be a multiple of STRIDE={STRIDE}: the strided "
                         f"frames of every row must be the same frames")
    renderers = Renderers(stages / "codebook.safetensors",
                          None if temporal is None else temporal / "codebook.safetensors", reading)
    judges = IdentityJudges(judge)
    motion = MotionDiffusionStage.for_inference(StageFiles(stages))
    features = inception(extractor or InceptionFeatures(), feature_cache or OUTPUT_ROOT / "inception-features")
    scores = {name: SetScores(renderers.rows, renderers.primary, judges, reading.kid_subset) for name in TEST_SETS}
    collected = Collected(scores, torch.Generator().manual_seed(1000 + seed))
    done = collected.resume(progress)
    for index, clips in enumerate(test_chunks(data, reading)):
        if index < done:
            continue
        real = real_frames(clips, judges, data.resolution)
        collected.real_features.append(features(real["frames"]))
        collected.speakers += [s for s in clips["speaker"] for _ in range(FRAMES_PER_CLIP)]
        collected.clip_speakers.update(zip(clips["key"], clips["speaker"], strict=True))
        degraded = degrade_real_frames(clips["hr_frames"].flatten(0, 1), data.resolution, DEGRADED_SEED,
                                       start=len(collected.recipes))
        collected.recipes += degraded.recipes
        collected.digests.append(degraded.digest())
        inputs = {"stage2": rerender_frames(motion, clips["frames"], clips["landmarks"], clips["audio"],
                                            data.resolution, collected.generator, clips["gaze"], clips["known"]),
                  "degraded": degraded.frames.view_as(clips["frames"])}
        for name, low in inputs.items():
            for row, frames, inner in renderers.outputs(low):
                scores[name].add(row, frames, real, features, inner)
                if (reading.split, name, row, seed, index) == ("test", "stage2", fidelity_row(renderers.default), 0, 0):
                    save_strip(low, frames, real["frames"])  # the README's picture: the table's reading only
        if progress is not None:
            collected.save(progress, index + 1)
    real_all = np.concatenate(collected.real_features)
    recipes = collected.recipes
    return {"sets": {name: s.finish(real_all, collected.speakers) for name, s in scores.items()},
            "speakers": collected.clip_speakers, "frames": len(real_all), "rows": renderers.rows,
            "primary": list(renderers.primary), "training": renderers.training(),
            "judge_size": judges.size, "motion_renderer": "windowed" if motion.cfg.windowed else "sequential",
            "degraded": {"seed": DEGRADED_SEED, "recipes": recipes, "beyond_training": beyond_training_counts(recipes),
                         "digests": collected.digests}}


def save_strip(low: torch.Tensor, rendered: torch.Tensor, real: torch.Tensor, count: int = 4) -> None:
    """IMAGE: per row one frame (frame 0 of the first ``count`` clips): the 64 px input (pixels enlarged, nearest),
    bicubic, the renderer at its default fidelity and the real 256 px frame."""
    from common.media import write_png
    picks = torch.arange(min(count, low.shape[0])) * low.shape[1]
    flat = low.flatten(0, 1)[picks]
    columns = [F.interpolate(flat, size=MEASURE_SIZE, mode="nearest"), to_measurement_size(flat, MEASURE_SIZE),
               rendered[picks].clamp(-1, 1), real[picks]]
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    write_png(IMAGE, image_grid(columns))
