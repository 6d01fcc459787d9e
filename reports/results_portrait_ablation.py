"""``make results portrait``: the Stage-1 ablation, one seed's evaluation (the table: ``results_portrait_table``).

Every row is a latent z_hat or a face image per test clip, for each speech condition (:data:`CONDITIONS`); each goes
through the same path: decoded (or encoded, for image rows) by the seed's VAE, scored by its latent error to the true
face, then brought to each judge's size by :func:`evaluation.measure.to_measurement_size` and rounded to uint8 as real
frames are. Judges, independent of the generator: the ConRe face encoder of the judge stage (seed 100, trained on the
other half of the training speakers, ``data.speaker_part=1/2``, used for nothing else) at ``JUDGE_SIZE``, and dlib's
face recognition model at ``DLIB_SIZE`` with the face and its landmarks detected in the image itself (an undetected
face is a miss). The generated rows share one draw of K residual samples per clip (the noise fixed by the seed and the
clip's place): the portraits are sample 0 shrunk by each row's a; plug-in and oracle a read all K samples.
"""
from __future__ import annotations

import base64
import io
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.images import image_grid, to_uint8, to_unit
from evaluation.identity import DlibFaceEmbedder, FaceNotFoundError
from evaluation.measure import scale_landmarks, to_measurement_size
from lightning_modules.conre import ConReStage
from lightning_modules.portrait_diffusion import PortraitDiffusionStage, PortraitSampler
from lightning_modules.prior_weight import oracle_prior_weight, plug_in_prior_weight
from lightning_modules.saw import SAWStage
from lightning_modules.stagefile import StageFiles
from reports.eval_inputs import first_frames, ideal_images
from reports.results_portrait_stats import (
    CONDITIONS,
    choose_on_val,
    condition_audio,
    errors_by_prior_weight,
    gallery_hits,
    latent_error,
    nearest_voice_latents,
)

ROWS = ("no prior", "a = 0 (raw sample)", "best constant a", "SAW", "plug-in a (K samples)",
        "oracle a (SAW's ceiling)", "best guidance, a = 0", "nearest voice, k = 1", "nearest voice, k = 10",
        "mean face (prior decoded)", "random training face", "ideal reader's portrait (ceiling)")
WEIGHTED = ("best constant a", "SAW", "plug-in a (K samples)", "oracle a (SAW's ceiling)")  # rows with a per clip
SAMPLE_STEPS, GUIDANCE, SAMPLES = 25, 3.0, 4
PRIOR_WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
GUIDANCE_GRID = (1.0, 2.0, 3.0, 5.0)
NEAREST = (1, 10)
JUDGE_SIZE, DLIB_SIZE = 64, 256
METRICS = ("latent_error", "conre_cosine", "conre_top1", "conre_top5", "dlib_found", "dlib_top1", "dlib_top5")
GRID_SPEAKERS = 8
GRID_COLUMNS = ("real face", "nearest voice, k = 1", "a = 0 (raw sample)", "best constant a", "SAW")
CHUNK = 16  # clips per sampler call (the noise of a clip depends on its chunk: fixed, so every run draws the same)


def draw_residuals(sampler: PortraitSampler, audio: torch.Tensor, guidance: float, seed: int,
                   samples: int = 1) -> torch.Tensor:
    """[N, K, C, H, W] residual samples (K = ``samples``) of every clip, in fixed chunks of CHUNK clips."""
    draws = []
    for start in range(0, len(audio), CHUNK):
        part = audio[start:start + CHUNK].repeat_interleave(samples, 0)
        drawn = sampler.sample(part, SAMPLE_STEPS, guidance, seed + start, prior_weight=0.0, parts=True)
        draws.append(drawn.residuals.float().unflatten(0, (-1, samples)))
    return torch.cat(draws)


def encode(sampler: PortraitSampler, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([sampler.vae.encode(images[i:i + 64].float()) for i in range(0, len(images), 64)]).float()


def decode(sampler: PortraitSampler, latents: torch.Tensor) -> torch.Tensor:
    return torch.cat([sampler.vae.decode(latents[i:i + 64]) for i in range(0, len(latents), 64)]).float()


def val_choices(sampler: PortraitSampler, val: dict, seed: int) -> dict:
    """The constant a and the guidance scale chosen on the val split, both by the mean latent error to the true
    face (the judges are never used for a choice): a over PRIOR_WEIGHT_GRID on one sample per clip at GUIDANCE,
    the guidance over GUIDANCE_GRID at a = 0."""
    residual = sampler.denoiser.residual(encode(sampler, val["frames"]))
    samples = {g: draw_residuals(sampler, val["audio"], g, seed)[:, 0] for g in {*GUIDANCE_GRID, GUIDANCE}}
    by_guidance = {g: errors_by_prior_weight(residual, samples[g], (0.0,))[0.0] for g in GUIDANCE_GRID}
    by_a = errors_by_prior_weight(residual, samples[GUIDANCE], PRIOR_WEIGHT_GRID)
    return {"prior_weight": choose_on_val(by_a), "guidance": choose_on_val(by_guidance),
            "val_latent_error_by_prior_weight": by_a, "val_latent_error_by_guidance": by_guidance}


class Judges:
    """The ConRe judge's face encoder and dlib (detecting the face itself), both fed through to_measurement_size."""

    def __init__(self, judge: Path):
        self.face = ConReStage.for_inference(StageFiles.of(judge, "conre")).face
        self.dlib = DlibFaceEmbedder()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, fallback: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """{"conre": [N, E], "dlib": [N, 128], "found": [N] bool: dlib found the face}. Where dlib finds no face,
        its embedding is zeros (a miss), or, with ``fallback`` landmarks [N, 68, 2] at the images' size (the real
        faces of the gallery), the embedding of the chip aligned from them."""
        judged = to_unit(to_uint8(to_measurement_size(images, JUDGE_SIZE)))
        conre = torch.cat([self.face(judged[i:i + 64]) for i in range(0, len(judged), 64)]).float()
        marks = None if fallback is None else scale_landmarks(fallback, images.shape[-1], DLIB_SIZE)
        dlib, found = [], []
        for index, image in enumerate(to_uint8(to_measurement_size(images, DLIB_SIZE))):
            try:
                dlib.append(self.dlib.embed(image))
                found.append(True)
            except FaceNotFoundError:
                dlib.append(np.zeros(128) if marks is None else self.dlib.embed(image, marks[index]))
                found.append(False)
        return {"conre": conre, "dlib": torch.from_numpy(np.stack(dlib)).float(), "found": torch.tensor(found)}


def scores(query: dict, real: dict, speaker: torch.Tensor, target: torch.Tensor, latents: torch.Tensor) -> dict:
    """Per-clip values of every metric of one row (lists in the order of the test clips)."""
    every = torch.ones(len(speaker), dtype=torch.bool)
    gallery = torch.nn.functional.normalize(real["conre"], dim=-1)
    labels = torch.unique(speaker)
    own = torch.stack([gallery[speaker == s].mean(0) for s in labels])[torch.searchsorted(labels, speaker)]
    values = {"latent_error": latent_error(target, latents),
              "conre_cosine": torch.nn.functional.cosine_similarity(query["conre"], own, dim=-1),
              "conre_top1": gallery_hits(query["conre"], every, real["conre"], every, speaker, 1),
              "conre_top5": gallery_hits(query["conre"], every, real["conre"], every, speaker, 5),
              "dlib_found": query["found"].float(),
              "dlib_top1": gallery_hits(query["dlib"], query["found"], real["dlib"], real["found"], speaker, 1),
              "dlib_top5": gallery_hits(query["dlib"], query["found"], real["dlib"], real["found"], speaker, 5)}
    return {name: [float(v) for v in value] for name, value in values.items()}


def condition_rows(sampler: PortraitSampler, no_prior: PortraitSampler, audio: torch.Tensor, target: torch.Tensor,
                   nearest: dict, fixed: dict, choices: dict, seed: int) -> tuple[dict, dict]:
    """({row: latents [N, C, H, W] or ("image", images)}, {row: a [N, C]}) of one speech condition."""
    draws = draw_residuals(sampler, audio, GUIDANCE, seed, SAMPLES)
    first = draws[:, 0]
    count, channels = len(audio), first.shape[1]
    a = {"best constant a": torch.full((count, channels), choices["prior_weight"]),
         "SAW": sampler.prior_weights(audio, use_saw=True).float(),
         "plug-in a (K samples)": plug_in_prior_weight(draws),
         "oracle a (SAW's ceiling)": oracle_prior_weight(draws, sampler.denoiser.residual(target))}
    rows = {"no prior": draw_residuals(no_prior, audio, GUIDANCE, seed)[:, 0] + no_prior.denoiser.prior_mean,
            "a = 0 (raw sample)": sampler.denoiser.with_prior(first, torch.zeros(count, channels))}
    rows.update({row: sampler.denoiser.with_prior(first, a[row]) for row in WEIGHTED})
    best = choices["guidance"]
    guided = first if best == GUIDANCE else draw_residuals(sampler, audio, best, seed)[:, 0]
    rows["best guidance, a = 0"] = sampler.denoiser.with_prior(guided, torch.zeros(count, channels))
    embedding = sampler.denoiser.speech(audio)[1]
    for k in NEAREST:
        rows[f"nearest voice, k = {k}"] = nearest_voice_latents(embedding, nearest["embedding"], nearest["speaker"],
                                                                nearest["latents"], k)
    return rows | fixed, a


def grid_png(columns: list[torch.Tensor]) -> str:
    """The grid (one row per speaker, GRID_COLUMNS left to right) as a base64 PNG, cached with the numbers."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image_grid(columns)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@torch.no_grad()
def evaluate_ablation(stages: Path, no_prior_stages: Path, judge: Path, data, seed: int, corpus) -> dict:
    """One seed's ablation: {"choices", "rows": {condition: {row: {metric: [per clip]}}}, "prior_weights":
    {condition: {row: [per clip, channel mean]}}, "clips", "speakers", "grid_png"}."""
    sampler = SAWStage.for_inference(StageFiles(stages))
    no_prior = PortraitDiffusionStage.for_inference(StageFiles(no_prior_stages))
    val, test = first_frames(data, "val"), first_frames(data, "test")
    train = first_frames(replace(data, speaker_part=""), "train")
    choices = val_choices(sampler, val, seed)
    target = encode(sampler, test["frames"])
    nearest = {"embedding": torch.cat([sampler.denoiser.speech(train["audio"][i:i + 64])[1]
                                       for i in range(0, len(train["audio"]), 64)]),
               "speaker": train["speaker"], "latents": encode(sampler, train["frames"])}
    count = len(test["audio"])
    pick = random.Random(seed).choices(range(len(train["frames"])), k=count)
    ideal, _ = ideal_images(test["speaker_id"], test["frames"].shape[-1], corpus)
    fixed = {"mean face (prior decoded)": sampler.denoiser.prior_mean[None].float().repeat(count, 1, 1, 1),
             "random training face": ("image", train["frames"][pick].float()),
             "ideal reader's portrait (ceiling)": ("image", torch.as_tensor(to_unit(ideal)))}
    judges = Judges(judge)
    real = judges.embed(test["frames"], test["landmarks"].numpy())
    real_found = float(real["found"].float().mean())
    real["found"] = torch.ones(count, dtype=torch.bool)  # every real face is in the gallery (detected or not)
    results, weights, grid, done = {}, {}, None, {}
    for condition in CONDITIONS:
        audio = condition_audio(test["audio"], test["key"], condition)
        rows, a = condition_rows(sampler, no_prior, audio, target, nearest, fixed, choices, seed)
        results[condition], images = {}, {}
        for row in ROWS:
            if row in fixed and row in done:  # the rows that do not depend on speech are scored once
                images[row], results[condition][row] = done[row]
                continue
            value = rows[row]
            images[row], latents = ((value[1], encode(sampler, value[1])) if isinstance(value, tuple)
                                    else (decode(sampler, value), value))
            results[condition][row] = scores(judges.embed(images[row]), real, test["speaker"], target, latents)
            done[row] = images[row], results[condition][row]
        weights[condition] = {row: a[row].mean(1).tolist() for row in WEIGHTED}
        if grid is None:
            shown = [test["speaker_id"].index(name) for name in sorted(set(test["speaker_id"]))[:GRID_SPEAKERS]]
            grid = grid_png([test["frames"][shown], *(images[c][shown] for c in GRID_COLUMNS[1:])])
    return {"choices": choices, "rows": results, "prior_weights": weights, "clips": test["key"],
            "speakers": dict(zip(test["key"], test["speaker_id"], strict=True)), "real_dlib_found": real_found,
            "grid_png": grid}
