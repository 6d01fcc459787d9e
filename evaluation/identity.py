"""Identity similarity (CSIM) and speaker retrieval with a named face embedder.

Two embedders share one interface (``embed(image_rgb_uint8, landmarks=None) -> vector``):
- ``ArcFaceEmbedder``: insightface's ArcFace ONNX (e.g. ``w600k_r50.onnx``, 512-d) from a user path, run by
  onnxruntime; 5-point similarity alignment from 68-point landmarks to the 112 x 112 ArcFace template,
  RGB, ``(x - 127.5) / 127.5``;
- ``DlibFaceEmbedder``: dlib's face recognition ResNet (128-d) that the ``face-recognition-models``
  package ships, 150 x 150 chips aligned from dlib's 5 landmarks (HOG detector + 5-point predictor,
  or the 5 points taken from given 68-point landmarks). Its scale differs from ArcFace's (same person
  usually at Euclidean distance < 0.6): results always name the model.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.errors import SeespeakerError

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_SIZE = 112
DLIB_FIVE_FROM_68 = (45, 42, 36, 39, 33)
DLIB_SAME_PERSON_DISTANCE = 0.6


class FaceNotFoundError(SeespeakerError, ValueError):
    """No face was found in an image given without landmarks."""


def face_recognition_models_dir() -> Path:
    """The ``models`` folder of the installed ``face-recognition-models`` package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed: `pip install face-recognition-models`")
    return Path(spec.submodule_search_locations[0]) / "models"


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise ImportError("the dlib face embedder needs dlib: `pip install dlib-bin face-recognition-models`") from exc
    return dlib


def arcface_five_points(landmarks68: np.ndarray) -> np.ndarray:
    """ArcFace's 5 points [5, 2] from iBUG 68-point landmarks: eye centres (36-41, 42-47), nose tip 30,
    mouth corners 48 and 54."""
    points = np.asarray(landmarks68, np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected 68-point landmarks [68, 2], got {points.shape}")
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; Umeyama) mapping source to target: 2 x 3."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    cs, ct = source - mean_s, target - mean_t
    u, singular, vt = np.linalg.svd(ct.T @ cs / len(source))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / cs.var(0).sum()
    translation = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, translation[:, None]])


def align_arcface(image_rgb: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """The 112 x 112 RGB ArcFace crop of ``image_rgb``, aligned from its 68-point landmarks."""
    matrix = similarity_transform(arcface_five_points(landmarks68), ARCFACE_TEMPLATE)
    return cv2.warpAffine(image_rgb, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class FaceEmbedder(ABC):
    """A face identity embedding: ``embed(image_rgb_uint8, landmarks=None) -> float64 [dim]``."""

    name: str
    dim: int

    @abstractmethod
    def embed(self, image: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Embedding of the (largest) face; raises FaceNotFoundError when none is found."""


class DlibLandmarks:
    """dlib's HOG face detector with a landmark predictor (5- or 68-point) from face-recognition-models."""

    def __init__(self, points: int = 68, upsample: int = 1, models_dir: str | Path | None = None):
        dlib = _import_dlib()
        models = Path(models_dir) if models_dir else face_recognition_models_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(models / f"shape_predictor_{points}_face_landmarks.dat"))
        self.upsample = upsample

    def shape(self, image: np.ndarray):
        """dlib shape (full_object_detection) of the largest detected face."""
        faces = self.detector(image, self.upsample)
        if len(faces) == 0:
            raise FaceNotFoundError("no face found by dlib's HOG detector; give landmarks or a face-centred image")
        largest = max(faces, key=lambda rect: rect.area())
        return self.predictor(image, largest)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Landmarks [points, 2] of the largest face in an RGB uint8 image."""
        return np.array([(p.x, p.y) for p in self.shape(_rgb_uint8(image)).parts()], dtype=np.float64)


class DlibFaceEmbedder(FaceEmbedder):
    """dlib's face recognition ResNet (128-d) on 150 x 150 chips aligned from 5 landmarks."""

    name = "dlib_face_recognition_resnet_model_v1"
    dim = 128

    def __init__(self, models_dir: str | Path | None = None, upsample: int = 1, jitters: int = 0):
        self._dlib = _import_dlib()
        models = Path(models_dir) if models_dir else face_recognition_models_dir()
        self.landmarks = DlibLandmarks(points=5, upsample=upsample, models_dir=models)
        self.model = self._dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.jitters = jitters

    def _shape_from_landmarks(self, landmarks: np.ndarray):
        points = np.asarray(landmarks, np.float64)
        if points.shape == (68, 2):
            points = points[list(DLIB_FIVE_FROM_68)]
        if points.shape != (5, 2):
            raise ValueError(f"expected 68-point or dlib 5-point landmarks, got {points.shape}")
        low, high = points.min(0), points.max(0)
        box = self._dlib.rectangle(int(low[0]), int(low[1]), int(np.ceil(high[0])), int(np.ceil(high[1])))
        return self._dlib.full_object_detection(box, [self._dlib.point(int(round(x)), int(round(y)))
                                                      for x, y in points])

    def embed(self, image: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """128-d descriptor; landmarks (68-point or dlib 5-point) skip the detector."""
        image = _rgb_uint8(image)
        shape = self.landmarks.shape(image) if landmarks is None else self._shape_from_landmarks(landmarks)
        return np.array(self.model.compute_face_descriptor(image, shape, self.jitters), dtype=np.float64)


class ArcFaceEmbedder(FaceEmbedder):
    """insightface ArcFace ONNX (user path) run by onnxruntime on 112 x 112 aligned RGB crops."""

    dim = 512

    def __init__(self, model_path: str | Path, providers: list[str] | None = None,
                 landmarks: DlibLandmarks | None = None):
        try:
            import onnxruntime
        except ImportError as exc:
            raise ImportError(
                "ArcFaceEmbedder needs onnxruntime: `pip install onnxruntime` (or onnxruntime-gpu), "
                "or use DlibFaceEmbedder, which needs no extra package"
            ) from exc
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ArcFace model {self.model_path} does not exist; give the path of w600k_r50.onnx")
        self.session = onnxruntime.InferenceSession(str(self.model_path),
                                                    providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name = f"arcface:{self.model_path.name}"
        self._landmarks = landmarks

    def embed(self, image: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """512-d embedding; without 68-point landmarks, dlib's HOG detector and 68-point predictor find them."""
        image = _rgb_uint8(image)
        if landmarks is None:
            self._landmarks = self._landmarks or DlibLandmarks(points=68)
            landmarks = self._landmarks(image)
        crop = align_arcface(image, landmarks).astype(np.float32)
        blob = ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None]
        return np.asarray(self.session.run(None, {self.input_name: blob})[0][0], dtype=np.float64)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of the rows of ``a`` [..., D] and ``b`` [..., D] (broadcast)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@dataclass
class CSIMResult:
    """Mean cosine similarity of one video's frames to the reference face; frames without a face are counted."""

    model: str
    csim: float
    n_frames: int
    n_no_face: int
    per_frame: list[float] = field(repr=False)


def csim(embedder: FaceEmbedder, reference_face: np.ndarray, frames, reference_landmarks=None,
         frame_landmarks=None) -> CSIMResult:
    """CSIM of one video: cosine of every frame's embedding to the reference face's, averaged over frames."""
    reference = embedder.embed(reference_face, reference_landmarks)
    similarities, missing = [], 0
    for index, frame in enumerate(frames):
        try:
            emb = embedder.embed(frame, None if frame_landmarks is None else frame_landmarks[index])
        except FaceNotFoundError:
            missing += 1
            continue
        similarities.append(float(cosine_similarity(reference, emb)))
    value = float(np.mean(similarities)) if similarities else float("nan")
    return CSIMResult(model=embedder.name, csim=value, n_frames=len(similarities) + missing, n_no_face=missing,
                      per_frame=similarities)


def dataset_csim(results: list[CSIMResult]) -> dict:
    """Unweighted mean CSIM over videos (videos with no face in any frame are counted, not averaged)."""
    models = {r.model for r in results}
    if len(models) != 1:
        raise ValueError(f"CSIM results come from different models {sorted(models)}; compare one model at a time")
    scored = [r.csim for r in results if r.per_frame]
    return {"model": models.pop(), "csim": float(np.mean(scored)) if scored else float("nan"),
            "n_videos": len(scored), "n_videos_without_face": len(results) - len(scored),
            "n_frames": sum(r.n_frames for r in results), "n_frames_without_face": sum(r.n_no_face for r in results)}


@dataclass
class RetrievalResult:
    """Recall@k of queries against a gallery, by cosine similarity."""

    model: str
    recall_at_k: dict[int, float]
    n_queries: int
    n_gallery: int


def retrieval_recall(query_embeddings: np.ndarray, query_ids: list, gallery_embeddings: np.ndarray, gallery_ids: list,
                     model: str, ks: tuple[int, ...] = (1, 5)) -> RetrievalResult:
    """A query is found at k when one of its k most similar gallery entries has its identity."""
    queries, gallery = np.asarray(query_embeddings, np.float64), np.asarray(gallery_embeddings, np.float64)
    if len(queries) != len(query_ids) or len(gallery) != len(gallery_ids):
        raise ValueError("retrieval_recall: embeddings and ids differ in length")
    similarity = cosine_similarity(queries[:, None, :], gallery[None, :, :])
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.asarray(gallery_ids, dtype=object)[order] == np.asarray(query_ids, dtype=object)[:, None]
    recall = {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
    return RetrievalResult(model=model, recall_at_k=recall, n_queries=len(queries), n_gallery=len(gallery))
