"""``make results NAMES=e2e``: one seed's evaluation of the whole system from speech alone (the table:
:mod:`reports.results_e2e`).

One clip per test speaker (its first, 2 s), its speech alone in: speech -> portrait (Stage 1) -> motion and frames
(Stage 2) -> lip enhancement -> codebook rendering. Rows (ROWS): the truth; the full system; the system with each
contribution off (no face prior: the portrait stage trained with ``stage.prior=none``; no SAW: the constant prior
weight; no lip enhancer: the motion stage's frames rendered; no codebook: the lip-enhanced frames before the renderer);
the real first frame animated (Stage 2's error alone); the real face of the training speaker nearest by voice
animated; the prior's mean face animated; and the full system's video against another test clip's speech (the sync
floor). Rows share what they can: every portrait is animated by the same pipeline with the same seed, no lip
enhancer and no codebook come from the full system's run.

Every row reaches every measure at MEASURE_SIZE through :func:`evaluation.measure.to_measurement_size`: LSE-C / LSE-D
by the independent scorer expert; the expert-free sync measure (:mod:`evaluation.mouth_sync`: face rate, r, null,
margin, r with the real clip's mouth opening); identity to the real face by dlib (faces detected in the generated
frames) and by the independent ConRe judge; temporal consistency outside the mouth; Inception features for FID (every
frame of the PRIMARY rows, >= 2048 frames) and KID (every STRIDE-th frame of every row) against the real frames.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.images import image_grid, to_uint8, to_unit
from datamodules.sample import MOTION_TRUTH_COLUMNS
from evaluation.fid import InceptionFeatures, fid_from_stats
from evaluation.identity import DlibFaceEmbedder, FaceNotFoundError
from evaluation.kid import kid
from evaluation.lse import SyncClip, lse_scores
from evaluation.measure import scale_landmarks, to_measurement_size
from evaluation.mouth_sync import mouth_openings, opening_sync
from evaluation.temporal import non_mouth_mask, temporal_statistics
from generation.pipeline import GenerationOptions, TalkingFacePipeline
from generation.portrait import PortraitGenerator, fit_portrait
from lightning_modules.conre import ConReStage
from lightning_modules.stagefile import StageFiles
from lightning_modules.syncnet import SyncNetStage, sync_region
from reports.eval_inputs import first_frames, test_clips
from reports.measures import inception, stats
from reports.results_portrait_stats import nearest_speakers

ROWS = {"truth": "ground truth", "full": "full system (speech only)", "no_prior": "no face prior",
        "no_saw": "no SAW (constant prior weight)", "no_lips": "no lip enhancer", "no_codebook": "no codebook (64 px)",
        "real_portrait": "real portrait animated", "nearest_voice": "nearest-voice speaker's face animated",
        "mean_face": "mean face animated", "mismatched": "full system, another clip's speech"}
PORTRAIT_ROWS = ("full", "no_prior", "no_saw", "real_portrait", "nearest_voice", "mean_face")
PRIMARY = ("truth", "full")
CLIPS = 50  # one per test speaker: 50 x 50 frames = 2500 frames for FID
MEASURE_SIZE = 256
STRIDE = 5  # identity and the other rows' KID features on every 5th frame
KID_SUBSET = 200
PICTURE_SPEAKERS = 4
IMAGE = Path("docs/images/e2e_speakers.png")
MOUTH = MOTION_TRUTH_COLUMNS.index("mouth")


class Judges:
    """The measures that need a model: the scorer expert, dlib's face recognition and the ConRe identity judge."""

    def __init__(self, scorer: Path, judge: Path):
        self.expert, self.expert_cfg = SyncNetStage.for_inference(StageFiles.of(scorer, "syncnet"))
        files = StageFiles.of(judge, "conre")
        self.judge_size = files["conre"].trained_resolution() or 64
        self.face = ConReStage.for_inference(files).face
        self.dlib = DlibFaceEmbedder()

    def lse(self, key: str, frames: torch.Tensor, audio: torch.Tensor) -> dict:
        clip = SyncClip(key, sync_region(frames, self.expert_cfg.region), audio)
        score = lse_scores(self.expert, [clip], expert_label="scorer").clips[0]
        return {"lse_c": score.lse_c, "lse_d": score.lse_d, "offset_zero": float(score.offset == 0)}

    @torch.no_grad()
    def identity(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"dlib": [n, 128] (NaN rows where no face is found), "conre": [n, E]}, unit length."""
        rows = []
        for image in to_uint8(frames):
            try:
                rows.append(torch.from_numpy(self.dlib.embed(image)).float())
            except FaceNotFoundError:
                rows.append(torch.full((128,), math.nan))
        conre = self.face(to_unit(to_uint8(to_measurement_size(frames, self.judge_size)))).float()
        return {"dlib": F.normalize(torch.stack(rows), dim=-1), "conre": F.normalize(conre, dim=-1)}


def clip_scores(key: str, frames: torch.Tensor, audio: torch.Tensor, real: dict, judges: Judges,
                truth_mouth: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """One row's video of one clip, already at MEASURE_SIZE -> (its per-clip measures, its mouth openings)."""
    opening = mouth_openings(to_uint8(frames))
    ids = judges.identity(frames[::STRIDE])
    similarity = {name: (ids[name] * real["ids"][name]).sum(-1) for name in ("dlib", "conre")}
    return {**sync_scores(key, frames, opening, audio, judges, truth_mouth),
            "identity_dlib": float(np.nanmean(similarity["dlib"].numpy())) if similarity["dlib"].isfinite().any()
            else math.nan, "identity_conre": float(similarity["conre"].mean()),
            **temporal_statistics(frames, real["frames"], real["mask"])}, opening


def sync_scores(key: str, frames: torch.Tensor, opening: np.ndarray, audio: torch.Tensor, judges: Judges,
                truth_mouth: np.ndarray | None) -> dict:
    """The measures that hear the speech: LSE by the scorer and the mouth openings against the loudness."""
    sync = opening_sync(opening, audio.numpy(), mouth_truth=truth_mouth)
    return {**judges.lse(key, frames, audio), **{f"mouth_{k}": v for k, v in sync.items() if k != "frames"}}


def real_clip(clip: dict, judges: Judges, resolution: int) -> dict:
    """The real clip at MEASURE_SIZE with its non-mouth masks and its first frame's identity embeddings."""
    frames = to_measurement_size(clip["frames"], MEASURE_SIZE)
    marks = scale_landmarks(clip["landmarks"].numpy(), resolution, MEASURE_SIZE)
    ids = judges.identity(frames[:1])
    if not ids["dlib"].isfinite().all():  # the real face by its corpus landmarks where dlib misses it
        ids["dlib"] = F.normalize(torch.from_numpy(judges.dlib.embed(to_uint8(frames[:1])[0], marks[0])).float()[None],
                                  dim=-1)
    return {"frames": frames, "mask": non_mouth_mask(marks, MEASURE_SIZE), "ids": ids}


def portraits(stages: Path, no_prior: Path, clips: list[dict], data, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Each portrait row's face per clip [N, 3, size, size]: three generated from the speech, the real first frame,
    the nearest-voice training speaker's first real frame and the prior's mean face."""
    options = GenerationOptions(seed=seed)
    audio = torch.stack([clip["audio"] for clip in clips])
    full = PortraitGenerator(stages, use_saw=True)
    train = first_frames(replace(data, speaker_part=""), "train")
    with torch.no_grad():
        query = full.denoiser.speech(audio)[1]
        gallery = torch.cat([full.denoiser.speech(train["audio"][i:i + 64])[1]
                             for i in range(0, len(train["audio"]), 64)])
    nearest = nearest_speakers(query, gallery, train["speaker"], 1)[:, 0]
    first_clip = {int(s): i for i, s in reversed(list(enumerate(train["speaker"].tolist())))}
    faces = {
        "full": full.generate_batch(audio, options.steps, options.guidance, seed),
        "no_saw": PortraitGenerator(stages, use_saw=False).generate_batch(audio, options.steps, options.guidance, seed),
        "no_prior": PortraitGenerator(no_prior, use_saw=False).generate_batch(audio, options.steps, options.guidance,
                                                                              seed),
        "real_portrait": torch.stack([clip["frames"][0] for clip in clips]),
        "nearest_voice": train["frames"][[first_clip[int(s)] for s in nearest]],
        "mean_face": full.mean_face()[None].repeat(len(clips), 1, 1, 1)}
    return {row: torch.stack([fit_portrait(face, size) for face in faces[row]]) for row in PORTRAIT_ROWS}


@torch.no_grad()
def clip_videos(pipeline: TalkingFacePipeline, faces: dict[str, torch.Tensor], index: int,
                audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every generated row's video of clip ``index``; no lip enhancer and no codebook from the full system's run."""
    videos = {}
    for row in PORTRAIT_ROWS:
        steps: dict[str, torch.Tensor] = {}
        low, final = pipeline.video(faces[row][index], audio, {}, lambda _: None, steps)
        videos[row] = final
        if row == "full":
            videos["no_codebook"] = low
            videos["no_lips"] = pipeline.render(steps["motion_diffusion"])
    return videos


class Collected:
    """The clips so far: each row's per-clip measures and Inception features, and the picture's first speakers (real
    face, portrait, :func:`picture_frames`)."""

    def __init__(self):
        self.per_clip: dict[str, dict] = {row: {} for row in ROWS}
        self.inception_rows: dict[str, list[np.ndarray]] = {row: [] for row in ROWS}
        self.pictures: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def save(self, progress, clips: int) -> None:
        tensors = {f"inception/{row}": torch.from_numpy(np.concatenate(parts))
                   for row, parts in self.inception_rows.items() if parts}
        tensors.update({f"picture{i}/{part}": t for i, picture in enumerate(self.pictures)
                        for part, t in zip(("real", "portrait", "frames"), picture, strict=True)})
        progress.save(clips, {"per_clip": self.per_clip, "pictures": len(self.pictures)}, tensors)

    def resume(self, progress) -> int:
        """How many clips are done (0 without a progress file under the same key); restores them."""
        saved = None if progress is None else progress.resume()
        if saved is None:
            return 0
        clips, data, tensors = saved
        self.per_clip = data["per_clip"]
        self.inception_rows = {row: [tensors[f"inception/{row}"].numpy()] if f"inception/{row}" in tensors else []
                               for row in ROWS}
        self.pictures = [tuple(tensors[f"picture{i}/{part}"] for part in ("real", "portrait", "frames"))
                         for i in range(data["pictures"])]
        return clips


def evaluate_e2e(stages: Path, no_prior: Path, scorer: Path, judge: Path, data, seed: int, extractor=None,
                 feature_cache: Path | None = None, progress=None) -> dict:
    """Every row of one seed: {"per_clip": {row: {clip: measures}}, "rows": {row: kid/fid}, "speakers"};
    ``progress`` (a :class:`reports.progress.ChunkProgress`) saves the state after every clip and resumes after the
    last one saved."""
    from reports.results import OUTPUT_ROOT
    judges = Judges(scorer, judge)
    features = inception(extractor or InceptionFeatures(), feature_cache or OUTPUT_ROOT / "inception-features")
    pipeline = TalkingFacePipeline(stages, GenerationOptions(seed=seed), given_portrait=True)
    clips = test_clips(data, CLIPS)
    faces = portraits(stages, no_prior, clips, data, pipeline.animation_size() or data.resolution, seed)
    collected = Collected()
    done = collected.resume(progress)
    per_clip, inception_rows = collected.per_clip, collected.inception_rows
    for index, clip in enumerate(clips):
        if index < done:
            continue
        real = real_clip(clip, judges, data.resolution)
        videos = {"truth": clip["frames"], **clip_videos(pipeline, faces, index, clip["audio"])}
        truth_mouth = clip["motion_truth"][:, MOUTH].numpy() if bool(clip["has_motion_truth"]) else None
        for row, video in videos.items():
            frames = to_measurement_size(video, MEASURE_SIZE)
            per_clip[row][clip["key"]], opening = clip_scores(clip["key"], frames, clip["audio"], real, judges,
                                                              truth_mouth)
            inception_rows[row].append(features(frames if row in PRIMARY else frames[::STRIDE]))
            if row == "full":  # the same frames and openings heard with the next clip's speech
                other = clips[(index + 1) % len(clips)]["audio"]
                per_clip["mismatched"][clip["key"]] = {
                    **per_clip["full"][clip["key"]], **sync_scores(clip["key"], frames, opening, other, judges, None)}
        if index < PICTURE_SPEAKERS:
            collected.pictures.append((real["frames"][0], faces["full"][index], picture_frames(videos["full"])))
        if progress is not None:
            collected.save(progress, index + 1)
    if seed == 0:
        save_picture(collected.pictures)
    rows = distances({row: parts for row, parts in inception_rows.items() if parts})
    rows["mismatched"] = rows["full"]  # the same frames
    return {"per_clip": per_clip, "rows": rows, "speakers": {c["key"]: c["speaker"] for c in clips},
            "frames_per_clip": int(clips[0]["frames"].shape[0]), "measure_size": MEASURE_SIZE, "stride": STRIDE}


def distances(inception_rows: dict[str, list[np.ndarray]]) -> dict[str, dict]:
    """KID of every generated row (every STRIDE-th frame) and FID of the PRIMARY ones (every frame) against the
    real frames."""
    real = np.concatenate(inception_rows["truth"])
    out = {}
    for row, parts in inception_rows.items():
        if row == "truth":
            continue
        every = np.concatenate(parts)
        strided = every[::STRIDE] if row in PRIMARY else every
        out[row] = {"kid": kid(real[::STRIDE], strided, subset_size=min(KID_SUBSET, len(strided))),
                    "kid_frames": len(strided)}
        if row in PRIMARY:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # N < 2048 only in the tests' tiny runs
                out[row]["fid"] = fid_from_stats(stats(real), stats(every)).fid
            out[row]["fid_frames"] = len(every)
    return out


def picture_frames(video: torch.Tensor, frames: int = 6) -> torch.Tensor:
    """The frames of a generated video the picture shows: ``frames`` of them, every 8th."""
    return video[[min(8 * t, len(video) - 1) for t in range(frames)]]


def save_picture(pictures: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Per speaker (a row): the real face, the portrait generated from the speech, and the generated video's
    :func:`picture_frames`, all at MEASURE_SIZE."""
    from common.media import write_png
    columns = [torch.stack([to_measurement_size(real[None], MEASURE_SIZE)[0] for real, _, _ in pictures]),
               torch.stack([to_measurement_size(face[None], MEASURE_SIZE)[0] for _, face, _ in pictures])]
    for t in range(len(pictures[0][2])):
        columns.append(torch.stack([to_measurement_size(frames[t][None], MEASURE_SIZE)[0]
                                    for _, _, frames in pictures]))
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    write_png(IMAGE, image_grid(columns))
