"""dlib probes of the synthetic corpus: how much of a speaker's identity dlib can read from the face attributes the
voice sets (:func:`dlib_ideal_retrieval`) or from any chosen attributes (:func:`dlib_attribute_retrieval`). They
bound what a speech-to-portrait model can reach with dlib as the judge; the README's Stage-1 section cites them.

Every face reaches dlib through :func:`evaluation.measure.to_measurement_size` at ``MEASURE_SIZE``.
"""
from __future__ import annotations

import numpy as np
import torch

from common.images import to_uint8, to_unit
from evaluation.identity import DlibFaceEmbedder
from evaluation.measure import as_float_frames, scale_landmarks, to_measurement_size
from lightning_modules.retrieval import retrieval_accuracy

MEASURE_SIZE = 64  # the corpus frames' own size; the numbers the README cites were measured at it


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


def dlib_embeddings(embedder: DlibFaceEmbedder, images: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """dlib embeddings [N, 128] of faces already measured (float [N, 3, R, R] in [-1, 1]) and their landmarks."""
    return torch.from_numpy(np.stack([embedder.embed(img, marks)
                                      for img, marks in zip(to_uint8(images), landmarks, strict=True)])).float()
