"""``make results portrait``: the identity of Stage-1 portraits of held-out speakers, against two baselines.

For every clip of the test split, a portrait is generated from its speech (with and without SAW) and compared
with the real faces of the test speakers: the cosine similarity to the speaker's own face, and retrieval top-1 /
top-5 of the speaker among all test speakers (gallery: each speaker's mean face embedding). Two face embedders
score it: the ConRe face encoder of the same seed and dlib's face recognition model. The baselines, scored the
same way in the same run: the prior alone (the decoded mean latent, the same face for every query) and the face
of a random training speaker; and the ceiling: the face an ideal reader of each voice would draw
(:func:`datamodules.synthetic.ideal_portrait`).
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.images import to_uint8, to_unit
from datamodules.datamodule import ShardDataModule
from evaluation.identity import DlibFaceEmbedder
from generation.portrait import PortraitGenerator
from lightning_modules.conre import ConReStage
from lightning_modules.retrieval import retrieval_accuracy
from lightning_modules.stagefile import StageFiles
from reports.results import Corpus

ROWS = ("generated, SAW", "generated, no SAW", "prior alone (mean face)", "random training speaker",
        "ideal reader's portrait (ceiling)")
SAMPLE_STEPS, GUIDANCE = 25, 3.0


def first_frames(data, split: str) -> dict[str, torch.Tensor]:
    """Every clip of a split once: its first frame [-1, 1], landmarks, 16 kHz speech and speaker index."""
    dm = ShardDataModule(replace(data, num_workers=0, clip_frames=1))
    dm.setup()
    parts: dict[str, list[torch.Tensor]] = {"frames": [], "landmarks": [], "audio": [], "speaker": []}
    ids: list[str] = []
    for batch in dm.eval_dataloader(split):
        valid = batch["valid"]
        ids += [name for name, ok in zip(batch["speaker"], valid.tolist(), strict=True) if ok]
        parts["frames"].append(batch["frames"][valid, 0])
        parts["landmarks"].append(batch["landmarks"][valid, 0])
        parts["audio"].append(batch["audio"][valid])
        parts["speaker"].append(batch["speaker_index"][valid])
    return {k: torch.cat(v) for k, v in parts.items()} | {"speaker_id": ids}


def candidate_images(stages: Path, test: dict, train: dict, seed: int, corpus: Corpus,
                     batch: int = 26) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """The four rows' images, one per test clip (uint8 [N, R, R, 3]), with the landmarks to align them by:
    the test faces' mean landmarks for generated faces (the corpus is aligned), a real face's own otherwise;
    and SAW's weights on the test clips."""
    count = len(test["audio"])
    mean_marks = np.repeat(test["landmarks"].numpy().mean(0, keepdims=True), count, axis=0)
    images = {}
    for row, use_saw in ((ROWS[0], True), (ROWS[1], False)):
        generator = PortraitGenerator(stages, use_saw=use_saw)
        chunks = [generator.generate_batch(test["audio"][i:i + batch], SAMPLE_STEPS, GUIDANCE, seed + i)
                  for i in range(0, len(test["audio"]), batch)]
        images[row] = (np.concatenate(chunks), mean_marks)
        if use_saw:
            weights = saw_weights(generator, test["audio"])
    images[ROWS[2]] = (np.repeat(generator.mean_face()[None], count, axis=0), mean_marks)
    pick = random.Random(seed).choices(range(len(train["frames"])), k=count)
    images[ROWS[3]] = (to_uint8(train["frames"][pick]), train["landmarks"][pick].numpy())
    images[ROWS[4]] = ideal_images(test["speaker_id"], test["frames"].shape[-1], corpus)
    return images, weights


def ideal_images(speaker_ids: list[str], resolution: int, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """The ideal reader's portrait of each query's speaker, with its landmarks."""
    from datamodules.synthetic import draw_speaker, ideal_portrait
    share = corpus.voice_share()
    drawn = [ideal_portrait(draw_speaker(corpus.options["seed"], int(name[3:]), share), resolution)
             for name in speaker_ids]
    return np.stack([image for image, _ in drawn]), np.stack([marks for _, marks in drawn])


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
    real_emb = dlib_embeddings(dlib, np.stack([i for i, _ in real]), np.stack([m for _, m in real]))
    query_emb = dlib_embeddings(dlib, np.stack([i for i, _ in queries]), np.stack([m for _, m in queries]))
    labels, hits = torch.arange(group), []
    for start in range(0, len(drawn) - group + 1, group):
        part = slice(start, start + group)
        hits.append([retrieval_accuracy(query_emb[part], real_emb[part], labels, k)[0] for k in (1, 5)])
    return tuple(float(v) for v in np.mean(hits, axis=0))


@torch.no_grad()
def saw_weights(generator: PortraitGenerator, audio: torch.Tensor) -> dict[str, float]:
    """How much SAW's prior weight a varies: its mean, its std across the clips (averaged over channels)."""
    _, embedding = generator.denoiser.speech(audio)
    a = generator.saw(embedding)
    return {"mean": float(a.mean()), "std_across_clips": float(a.std(dim=0).mean())}


def identity_scores(query: torch.Tensor, real: torch.Tensor, speaker: torch.Tensor) -> dict[str, float]:
    """Cosine to the own speaker's mean real face, and retrieval top-1 / top-5 among the split's speakers."""
    labels = torch.unique(speaker)
    gallery = F.normalize(torch.stack([real[speaker == s].mean(0) for s in labels]), dim=-1)
    own = gallery[torch.searchsorted(labels, speaker)]
    cosine = (F.normalize(query, dim=-1) * own).sum(-1).mean().item()
    top1, chance1 = retrieval_accuracy(query, real, speaker, k=1)
    top5, chance5 = retrieval_accuracy(query, real, speaker, k=5)
    return {"cosine": cosine, "top1": top1, "top5": top5, "chance_top1": chance1, "chance_top5": chance5}


def dlib_embeddings(embedder: DlibFaceEmbedder, images: np.ndarray, landmarks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([embedder.embed(img, marks)
                                      for img, marks in zip(images, landmarks, strict=False)])).float()


@torch.no_grad()
def evaluate_portraits(stages: Path, data, seed: int, corpus: Corpus) -> dict:
    """{"rows": {row: {embedder: scores}}, "saw_weights": ...} for one seed's Stage-1 files on the test split."""
    test, train = first_frames(data, "test"), first_frames(data, "train")
    images, weights = candidate_images(stages, test, train, seed, corpus)
    face_encoder = ConReStage.for_inference(StageFiles(stages)).face
    dlib = DlibFaceEmbedder()
    real = {"conre": face_encoder(test["frames"]),
            "dlib": dlib_embeddings(dlib, to_uint8(test["frames"]), test["landmarks"].numpy())}
    results = {}
    for row, (row_images, marks) in images.items():
        query = {"conre": face_encoder(to_unit(row_images)), "dlib": dlib_embeddings(dlib, row_images, marks)}
        results[row] = {name: identity_scores(query[name], real[name], test["speaker"]) for name in real}
    return {"rows": results, "saw_weights": weights}


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
    result = cached_evaluation("portrait", seed, inputs, lambda: evaluate_portraits(stages, data, seed, corpus),
                               corpus)
    return {"seed": seed, **result}


def portrait_results(corpus: Corpus) -> tuple[dict, str]:
    """Train (or reuse) the small Stage-1 chain on ``corpus`` for every seed; tabulate its portraits' identity."""
    from reports.results import SEEDS, mean_spread

    per_seed = [portrait_seed(seed, corpus) for seed in SEEDS]

    def cell(row: str, embedder: str, metric: str) -> str:
        return mean_spread([r["rows"][row][embedder][metric] for r in per_seed])

    first = per_seed[0]["rows"][ROWS[0]]["conre"]
    lines = [f"Identity of portraits generated from held-out speakers' speech (corpus `{corpus.root}`, voice share "
             f"{corpus.voice_share():g}; {len(SEEDS)} seeds, mean ± std; "
             f"one portrait per test clip, {SAMPLE_STEPS} sampler steps, guidance {GUIDANCE}). Cosine: to the "
             f"speaker's own mean real face; top-k: retrieval of the speaker among the test speakers (chance "
             f"top-1 {first['chance_top1']:.3f}, top-5 {first['chance_top5']:.3f}).", "",
             "| portrait | ConRe cos | ConRe top-1 | ConRe top-5 | dlib cos | dlib top-1 | dlib top-5 |",
             "|---|---|---|---|---|---|---|"]
    for row in ROWS:
        lines.append(f"| {row} | " + " | ".join(cell(row, e, m) for e in ("conre", "dlib")
                                               for m in ("cosine", "top1", "top5")) + " |")
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
