"""Identity similarity on real face photos shipped by installed packages (skimage, matplotlib)."""

import os
import sys

import cv2
import matplotlib
import numpy as np
import pytest
import skimage.data
from PIL import Image

from evaluation.identity import (
    ARCFACE_TEMPLATE,
    DLIB_SAME_PERSON_DISTANCE,
    ArcFaceEmbedder,
    DlibFaceEmbedder,
    DlibLandmarks,
    align_arcface,
    cosine_similarity,
    csim,
    dataset_csim,
    retrieval_recall,
    similarity_transform,
)


@pytest.fixture(scope="module")
def embedder():
    return DlibFaceEmbedder()


@pytest.fixture(scope="module")
def faces():
    """Eileen Collins (skimage's astronaut) and Grace Hopper (matplotlib's sample data), plus transformed copies."""
    astronaut = skimage.data.astronaut()
    hopper_path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    hopper = np.asarray(Image.open(hopper_path).convert("RGB"))
    rotate = cv2.getRotationMatrix2D((220, 120), 4, 1.0)
    astronaut_rotated = cv2.warpAffine(astronaut, rotate, astronaut.shape[1::-1])
    shrink = cv2.getRotationMatrix2D((270, 230), -3, 0.9)
    hopper_moved = cv2.warpAffine(hopper, shrink, hopper.shape[1::-1])
    return {"astronaut": astronaut, "astronaut_rotated": astronaut_rotated, "hopper": hopper,
            "hopper_moved": hopper_moved}


@pytest.fixture(scope="module")
def embeddings(embedder, faces):
    return {name: embedder.embed(image) for name, image in faces.items()}


def test_csim_of_a_face_with_itself_is_one(embedder, faces):
    result = csim(embedder, faces["astronaut"], [faces["astronaut"]] * 2)
    assert result.model == "dlib_face_recognition_resnet_model_v1"
    assert result.n_frames == 2 and result.n_no_face == 0
    assert result.csim == pytest.approx(1.0, abs=1e-9)


def test_a_slightly_rotated_copy_is_the_same_person(embeddings):
    for name in ("astronaut", "hopper"):
        other = "astronaut_rotated" if name == "astronaut" else "hopper_moved"
        assert np.linalg.norm(embeddings[name] - embeddings[other]) < DLIB_SAME_PERSON_DISTANCE / 3


def test_two_different_people_are_beyond_the_same_person_threshold(embeddings):
    for a in ("astronaut", "astronaut_rotated"):
        for b in ("hopper", "hopper_moved"):
            assert np.linalg.norm(embeddings[a] - embeddings[b]) > DLIB_SAME_PERSON_DISTANCE
    same = cosine_similarity(embeddings["astronaut"], embeddings["astronaut_rotated"])
    different = cosine_similarity(embeddings["astronaut"], embeddings["hopper"])
    assert same > different + 0.05


def test_given_landmarks_replace_the_detector(embedder, faces, embeddings):
    landmarks = DlibLandmarks(points=68)(faces["astronaut"])
    assert landmarks.shape == (68, 2)
    from_landmarks = embedder.embed(faces["astronaut"], landmarks)
    assert np.linalg.norm(from_landmarks - embeddings["astronaut"]) < DLIB_SAME_PERSON_DISTANCE / 3
    assert np.linalg.norm(from_landmarks - embeddings["hopper"]) > DLIB_SAME_PERSON_DISTANCE


def test_frames_without_a_face_are_counted_not_averaged(embedder, faces):
    blank = np.full((200, 200, 3), 127, dtype=np.uint8)
    result = csim(embedder, faces["astronaut"], [faces["astronaut_rotated"], blank])
    assert result.n_frames == 2 and result.n_no_face == 1 and len(result.per_frame) == 1
    summary = dataset_csim([result])
    assert summary["csim"] == pytest.approx(result.per_frame[0])
    assert summary["n_frames_without_face"] == 1 and summary["model"] == result.model


def test_retrieval_finds_each_speaker_among_the_gallery(embeddings):
    gallery = np.stack([embeddings["hopper"], embeddings["astronaut"]])
    queries = np.stack([embeddings["astronaut_rotated"], embeddings["hopper_moved"]])
    result = retrieval_recall(queries, ["collins", "hopper"], gallery, ["hopper", "collins"],
                              model="dlib_face_recognition_resnet_model_v1", ks=(1, 2))
    assert result.recall_at_k == {1: 1.0, 2: 1.0} and result.model.startswith("dlib")


def test_retrieval_recall_counts_hits_within_k():
    gallery = np.eye(3)
    queries = np.array([[1.0, 0.1, 0.0], [1.0, 0.9, 0.0]])
    result = retrieval_recall(queries, ["a", "b"], gallery, ["a", "b", "c"], model="toy", ks=(1, 2))
    assert result.recall_at_k == {1: 0.5, 2: 1.0}


def test_similarity_transform_recovers_a_known_alignment():
    angle, scale, shift = np.deg2rad(12), 2.5, np.array([140.0, 90.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = ARCFACE_TEMPLATE @ (scale * rotation).T + shift
    matrix = similarity_transform(source, ARCFACE_TEMPLATE)
    mapped = source @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE, atol=1e-9)


def test_arcface_alignment_puts_the_five_points_on_the_template():
    rotation = cv2.getRotationMatrix2D((0, 0), -10, 3.0)
    points = ARCFACE_TEMPLATE @ rotation[:, :2].T + np.array([120.0, 80.0])
    landmarks = np.zeros((68, 2))
    landmarks[36:42], landmarks[42:48] = points[0], points[1]
    landmarks[30], landmarks[48], landmarks[54] = points[2], points[3], points[4]
    image = np.zeros((480, 480, 3), dtype=np.uint8)
    for index, (x, y) in enumerate(points):
        cv2.circle(image, (int(round(x)), int(round(y))), 6, (50 * (index + 1), 255, 0), -1)
    crop = align_arcface(image, landmarks)
    assert crop.shape == (112, 112, 3)
    for index, (x, y) in enumerate(ARCFACE_TEMPLATE):
        assert crop[int(round(y)), int(round(x)), 1] > 200
        assert abs(int(crop[int(round(y)), int(round(x)), 0]) - 50 * (index + 1)) < 10


def test_arcface_without_onnxruntime_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        ArcFaceEmbedder(tmp_path / "w600k_r50.onnx")


def test_dlib_attribute_probe_finds_whole_faces_and_not_a_face_with_nothing_of_its_own():
    from datamodules.synth_face import FaceParams
    from reports.dlib_probes import dlib_attribute_retrieval

    every = set(FaceParams.__dataclass_fields__)
    assert dlib_attribute_retrieval(every, speakers=10, group=5) == (1.0, 1.0)
    top1, top5 = dlib_attribute_retrieval(set(), speakers=10, group=5)  # one query face for every speaker
    assert top1 == pytest.approx(1 / 5) and top5 == 1.0
    with pytest.raises(ValueError, match=r"\['hair_length'\] are not face attributes"):
        dlib_attribute_retrieval({"hair_length"}, speakers=10, group=5)
