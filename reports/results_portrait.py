"""The earlier Stage-1 identity table (SAW, constant a, two baselines) and the helpers the ablation table reuses.

``make results portrait`` now makes the Stage-1 ablation (``reports.results_portrait_table``), which reads its test
clips and ideal portraits from ``reports.eval_inputs``; :func:`portrait_results` below
is no longer registered in ``reports.results.RESULTS``. What follows describes that earlier table.

For every clip of the test split, a portrait is generated from its speech (with SAW's a(speech), and with the
portrait stage's constant prior weight a) and compared with the real faces of the test speakers: the cosine
similarity to the speaker's own face, and retrieval top-1 / top-5 of the speaker among all test speakers (gallery:
each speaker's mean face embedding). Two face embedders
score it: the ConRe face encoder of the same seed and dlib's face recognition model. The baselines, scored the
same way in the same run: the prior alone (the decoded mean latent, the same face for every query) and the face
of a random training speaker; and the ceiling: the face an ideal reader of each voice would draw
(:func:`datamodules.synthetic.ideal_portrait`). Every face, generated or real, reaches both embedders through
:func:`evaluation.measure.to_measurement_size` at ``MEASURE_SIZE``, and every mean comes with its 95% interval over
test speakers (:mod:`evaluation.intervals`).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.images import to_uint8, to_unit
from evaluation.identity import DlibFaceEmbedder
from evaluation.intervals import (
    format_interval,
    format_seeds_and_interval,
    paired_speaker_bootstrap,
    seed_mean_by_clip,
    speaker_bootstrap,
)
from evaluation.measure import MEASUREMENT_RESIZE, as_float_frames, scale_landmarks, to_measurement_size
from generation.portrait import PortraitGenerator
from lightning_modules.conre import ConReStage
from lightning_modules.retrieval import retrieval_accuracy, speaker_gallery
from lightning_modules.stagefile import StageFiles
from reports import plan
from reports.eval_inputs import first_frames, ideal_images
from reports.results import Corpus

ROWS = ("generated, SAW", "generated, no SAW", "prior alone (mean face)", "random training speaker",
        "ideal reader's portrait (ceiling)")
SAMPLE_STEPS, GUIDANCE = 25, 3.0
MEASURE_SIZE = 64  # every row and the real faces are scored at the corpus's 64 px, the ConRe judge's input size
EMBEDDERS = ("conre", "dlib")
METRICS = ("cosine", "top1", "top5")
# row differences worth an interval of their own: (row, minus row)
PAIRS = ((ROWS[0], ROWS[1]), (ROWS[0], ROWS[2]), (ROWS[0], ROWS[3]))


def candidate_images(stages: Path, test: dict, train: dict, seed: int, corpus: Corpus, batch: int = 26
                     ) -> tuple[dict[str, tuple[torch.Tensor | np.ndarray, np.ndarray]], dict[str, float]]:
    """The rows' images, one per test clip (float [N, 3, R, R] in [-1, 1], or uint8 [N, R, R, 3]), with the
    landmarks to align them by: the test faces' mean landmarks for generated faces (the corpus is aligned), a real
    face's own otherwise; and SAW's weights on the test clips."""
    count = len(test["audio"])
    mean_marks = np.repeat(test["landmarks"].numpy().mean(0, keepdims=True), count, axis=0)
    images = {}
    for row, use_saw in ((ROWS[0], True), (ROWS[1], False)):
        generator = PortraitGenerator(stages, use_saw=use_saw)
        chunks = [generator.generate_batch(test["audio"][i:i + batch], SAMPLE_STEPS, GUIDANCE, seed + i)
                  for i in range(0, len(test["audio"]), batch)]
        images[row] = (torch.cat(chunks), mean_marks)
        if use_saw:
            weights = saw_weights(generator, test["audio"])
    images[ROWS[2]] = (generator.mean_face()[None].repeat(count, 1, 1, 1), mean_marks)
    pick = random.Random(seed).choices(range(len(train["frames"])), k=count)
    images[ROWS[3]] = (train["frames"][pick], train["landmarks"][pick].numpy())
    images[ROWS[4]] = ideal_images(test["speaker_id"], test["frames"].shape[-1], corpus)
    return images, weights


def measured_faces(images: torch.Tensor | np.ndarray, landmarks: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Faces (float [N, 3, R, R] in [-1, 1] or uint8 [N, R, R, 3]) and their landmarks at MEASURE_SIZE, the faces
    rounded to uint8 values as real frames are (float [N, 3, S, S] in [-1, 1])."""
    faces = as_float_frames(images)
    measured = to_unit(to_uint8(to_measurement_size(faces, MEASURE_SIZE)))
    return measured, scale_landmarks(landmarks, faces.shape[-1], MEASURE_SIZE)


def dlib_ideal_retrieval(voice_share: float, speakers: int = 200, group: int = 50, seed: int = 5,
                         resolution: int = 64) -> tuple[float, float]:
    """(top-1, top-5) dlib retrieval of the ideal reader's portrait among ``group`` speakers drawn with
    ``voice_share`` (a neutral frame of each speaker's own face as the gallery), averaged over speakers // group
    groups: how much identity dlib can see in the voice for a corpus written with that share."""
    from datamodules.synthetic import draw_speaker, ideal_portrait

    drawn = [draw_speaker(seed, i, voice_share) for i in range(speakers)]
    return dlib_group_retrieval([ideal_portrait(s, resolution) for s in drawn], drawn, group, resolution)


def dlib_attribute_retrieval(kept: set[str], speakers: int = 200, group: int = 50, seed: int = 5,
                             resolution: int = 64) -> tuple[float, float]:
    """(top-1, top-5) dlib retrieval, as in :func:`dlib_ideal_retrieval`, of each speaker's face with only the
    ``kept`` attributes (names of ``FaceParams`` fields) its own and every other one at the middle of its range
    (:func:`datamodules.synthetic.middle_face`): how much of a face's identity dlib reads from those attributes."""
    from dataclasses import asdict

    from datamodules.synth_face import FaceParams
    from datamodules.synthetic import draw_speaker, middle_face, neutral_frame, voice_linked_face

    unknown = kept - set(FaceParams.__dataclass_fields__)
    if unknown:
        raise ValueError(f"kept attributes {sorted(unknown)} are not face attributes: choose from "
                         f"{', '.join(FaceParams.__dataclass_fields__)}")
    drawn = [draw_speaker(seed, i) for i in range(speakers)]
    middle = voice_linked_face(0.0, 0.0, 0.0, 0.0)
    queries = []
    for speaker in drawn:
        own = asdict(speaker.face)
        face = asdict(middle_face({k: own[k] if k in kept else v for k, v in middle.items()}))
        face.update({k: own[k] for k in kept})
        queries.append(neutral_frame(FaceParams(**face), resolution, np.random.default_rng(1)))
    return dlib_group_retrieval(queries, drawn, group, resolution)


def dlib_group_retrieval(queries: list[tuple[np.ndarray, np.ndarray]], drawn: list, group: int,
                         resolution: int) -> tuple[float, float]:
    """(top-1, top-5) dlib retrieval of each (image, landmarks) query among ``group`` speakers' neutral frames
    of their own faces, averaged over the groups."""
    from datamodules.synthetic import neutral_frame

    dlib = DlibFaceEmbedder()
    real = [neutral_frame(s.face, resolution, np.random.default_rng(1)) for s in drawn]
    real_emb = dlib_embeddings(dlib, *measured_faces(np.stack([i for i, _ in real]), np.stack([m for _, m in real])))
    query_emb = dlib_embeddings(dlib, *measured_faces(np.stack([i for i, _ in queries]),
                                                      np.stack([m for _, m in queries])))
    labels, hits = torch.arange(group), []
    for start in range(0, len(drawn) - group + 1, group):
        part = slice(start, start + group)
        hits.append([retrieval_accuracy(query_emb[part], real_emb[part], labels, k)[0] for k in (1, 5)])
    return tuple(float(v) for v in np.mean(hits, axis=0))


@torch.no_grad()
def saw_weights(generator: PortraitGenerator, audio: torch.Tensor) -> dict[str, float]:
    """How much SAW's prior weight a varies: its mean, its std across the clips (averaged over channels)."""
    a = generator.prior_weights(audio)
    return {"mean": float(a.mean()), "std_across_clips": float(a.std(dim=0).mean())}


def retrieval_hits(query: torch.Tensor, real: torch.Tensor, speaker: torch.Tensor, k: int) -> torch.Tensor:
    """Per query [N]: 1 when its speaker is among the k galleries (per-speaker mean real faces) nearest to it."""
    gallery, labels = speaker_gallery(real.float(), speaker)
    scores = F.normalize(query.float(), dim=-1) @ gallery.t()
    top = labels[scores.topk(min(k, len(labels)), dim=-1).indices]
    return (top == speaker[:, None]).any(dim=-1).float()


def identity_scores(query: torch.Tensor, real: torch.Tensor, speaker: torch.Tensor) -> dict:
    """Cosine to the own speaker's mean real face, and retrieval top-1 / top-5 among the split's speakers; their
    means, chance levels and per-query values (``per_clip``: {metric: [N]}, in the order of the queries)."""
    labels = torch.unique(speaker)
    gallery = F.normalize(torch.stack([real[speaker == s].mean(0) for s in labels]), dim=-1)
    own = gallery[torch.searchsorted(labels, speaker)]
    per_clip = {"cosine": (F.normalize(query, dim=-1) * own).sum(-1),
                "top1": retrieval_hits(query, real, speaker, 1), "top5": retrieval_hits(query, real, speaker, 5)}
    _, chance1 = retrieval_accuracy(query, real, speaker, k=1)
    _, chance5 = retrieval_accuracy(query, real, speaker, k=5)
    return {**{name: values.mean().item() for name, values in per_clip.items()}, "chance_top1": chance1,
            "chance_top5": chance5, "per_clip": {name: values.tolist() for name, values in per_clip.items()}}


def dlib_embeddings(embedder: DlibFaceEmbedder, images: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """dlib embeddings [N, 128] of faces already measured (float [N, 3, R, R] in [-1, 1]) and their landmarks."""
    return torch.from_numpy(np.stack([embedder.embed(img, marks)
                                      for img, marks in zip(to_uint8(images), landmarks, strict=True)])).float()


@torch.no_grad()
def evaluate_portraits(stages: Path, data, seed: int, corpus: Corpus) -> dict:
    """{"rows": {row: {embedder: scores}}, "saw_weights": ..., "clips": [key], "speakers": {key: speaker}} for one
    seed's Stage-1 files on the test split, every face measured at MEASURE_SIZE (the scores' per-clip lists follow
    the order of "clips")."""
    test, train = first_frames(data, "test"), first_frames(data, "train")
    images, weights = candidate_images(stages, test, train, seed, corpus)
    face_encoder = ConReStage.for_inference(StageFiles(stages)).face
    dlib = DlibFaceEmbedder()
    faces, marks = measured_faces(test["frames"], test["landmarks"].numpy())
    real = {"conre": face_encoder(faces), "dlib": dlib_embeddings(dlib, faces, marks)}
    results = {}
    for row, (row_images, row_marks) in images.items():
        faces, marks = measured_faces(row_images, row_marks)
        query = {"conre": face_encoder(faces), "dlib": dlib_embeddings(dlib, faces, marks)}
        results[row] = {name: identity_scores(query[name], real[name], test["speaker"]) for name in real}
    return {"rows": results, "saw_weights": weights, "clips": test["key"],
            "speakers": dict(zip(test["key"], test["speaker_id"], strict=True))}


def portrait_seed(seed: int, corpus: Corpus) -> dict:
    """One seed's rows: its Stage-1 chain on ``corpus`` trained (or reused) and its portraits scored."""
    from reports.results import cached_evaluation, shared_autoencoder, train
    from trainer.config import compose

    stages = shared_autoencoder(seed, corpus)
    for stage in ("conre", "portrait_diffusion", "saw"):
        train(stage, seed, stages, corpus=corpus)
    data = compose(["experiment=small", "stage=portrait_diffusion", f"data.root={corpus.root}"]).data
    inputs = [stages / f"{name}.safetensors" for name in ("conre", "autoencoder", "face_prior", "portrait_diffusion",
                                                          "saw")]
    result = cached_evaluation(f"portrait-{MEASURE_SIZE}px", seed, inputs,
                               lambda: evaluate_portraits(stages, data, seed, corpus), corpus)
    return {"seed": seed, **result}


def clip_values(per_seed: list[dict], row: str, embedder: str, metric: str) -> dict[str, float]:
    """A row's per-clip values of one embedder's metric, averaged over the seeds."""
    return seed_mean_by_clip([dict(zip(r["clips"], r["rows"][row][embedder]["per_clip"][metric], strict=True))
                              for r in per_seed])


def cell(per_seed: list[dict], row: str, embedder: str, metric: str) -> str:
    """One row's metric as mean ± std over seeds [95% interval over test speakers]."""
    interval = speaker_bootstrap(clip_values(per_seed, row, embedder, metric), per_seed[0]["speakers"])
    return format_seeds_and_interval([r["rows"][row][embedder][metric] for r in per_seed], interval)


def paired_lines(per_seed: list[dict]) -> list[str]:
    """One line per PAIRS entry: the cosine and top-1 differences by both embedders, with paired intervals."""
    lines = []
    for row, other in PAIRS:
        diffs = [f"{embedder} {metric} " + format_interval(*paired_speaker_bootstrap(
            clip_values(per_seed, row, embedder, metric), clip_values(per_seed, other, embedder, metric),
            per_seed[0]["speakers"])) for embedder in EMBEDDERS for metric in ("cosine", "top1")]
        lines.append(f"- {row} − {other}: " + ", ".join(diffs))
    return lines


def portrait_results(corpus: Corpus) -> tuple[dict, str]:
    """Train (or reuse) the small Stage-1 chain on ``corpus`` for every seed; tabulate its portraits' identity."""
    from reports.results import SEEDS, mean_spread

    per_seed = plan.every_seed(lambda seed: portrait_seed(seed, corpus), SEEDS)
    first = per_seed[0]["rows"][ROWS[0]]["conre"]
    lines = [f"Identity of portraits generated from held-out speakers' speech (corpus `{corpus.root}`, voice share "
             f"{corpus.voice_share():g}; {len(SEEDS)} seeds, mean ± std over seeds [95% interval over test "
             f"speakers, seed-averaged clips, speakers resampled]; "
             f"one portrait per test clip, {SAMPLE_STEPS} sampler steps, guidance {GUIDANCE}). Cosine: to the "
             f"speaker's own mean real face; top-k: retrieval of the speaker among the test speakers (chance "
             f"top-1 {first['chance_top1']:.3f}, top-5 {first['chance_top5']:.3f}). Every face, generated or "
             f"real, is measured at {MEASURE_SIZE} px ({MEASUREMENT_RESIZE}) before both embedders.", "",
             "| portrait | ConRe cos | ConRe top-1 | ConRe top-5 | dlib cos | dlib top-1 | dlib top-5 |",
             "|---|---|---|---|---|---|---|"]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(cell(per_seed, row, e, m) for e in EMBEDDERS for m in METRICS)
                     + " |")
    lines += ["", "Differences of rows on the same clips (mean [paired 95% interval over test speakers]):",
              *paired_lines(per_seed)]
    lines += ["", "SAW's prior weight a on the test clips: mean "
              f"{mean_spread([r['saw_weights']['mean'] for r in per_seed])}, std across clips "
              f"{mean_spread([r['saw_weights']['std_across_clips'] for r in per_seed])} (averaged over channels).",
              "", "Ideal reader's portrait: the face with the voice-linked attributes at their expectation given "
              "the voice and nothing else speaker-specific (`datamodules.synthetic.ideal_portrait`), the most a "
              "speech-to-portrait model can expect to match.",
              "", "The autoencoder and face prior are seed 0's, shared by all seeds; the seeds vary ConRe, the "
              "portrait diffusion and SAW. dlib: `dlib_face_recognition_resnet_model_v1` on chips aligned from "
              "the test faces' mean landmarks (generated faces) or the face's own landmarks (real faces)."]
    if corpus.train_words:
        lines[-1] += " Trained on this corpus with, beyond `experiment=small`: " + "; ".join(
            f"{stage} `{' '.join(words)}`" for stage, words in corpus.train_words.items()) + "."
    return {"corpus": str(corpus.root), "voice_share": corpus.voice_share(), "train_words": corpus.train_words,
            "per_seed": per_seed}, "\n".join(lines)
