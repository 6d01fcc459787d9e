"""The motion encoder's group-local latents: each group moves only with its own landmarks (or the gaze), and the
reconstruction error counts the gaze only where the clip knows it."""
from __future__ import annotations

import math

import torch

from lightning_modules.nets.face_frame import LANDMARK_GROUPS
from lightning_modules.nets.motion import MotionEncoder
from tests.unit.motion_faces import RES, faces, landmarks_grid


def group_changes(encoder: MotionEncoder, before: dict, landmarks: torch.Tensor, *args) -> dict[str, float]:
    """The largest absolute change of each group latent from ``before``."""
    after = encoder.groups(encoder(landmarks, RES, *args))
    return {name: (after[name] - before[name]).abs().max().item() for name in before}


def test_motion_groups_have_their_sizes_and_react_only_to_their_landmarks():
    torch.manual_seed(0)
    dims = {"lips": 12, "jaw": 5, "brows": 6, "eyes": 4, "pose": 5}
    encoder = MotionEncoder(dims, hidden=32)
    landmarks = landmarks_grid(3, 2)
    base = encoder.groups(encoder(landmarks, RES))
    assert {k: v.shape[-1] for k, v in base.items()} == dims
    # measure: the max absolute change of each group; only the moved group may change, exactly nothing else
    # (the eye corners and the nose bridge hold the face frame: moving them moves the frame of every group)
    movable = {"lips": LANDMARK_GROUPS["lips"], "jaw": LANDMARK_GROUPS["jaw"], "brows": LANDMARK_GROUPS["brows"],
               "eyes": (37, 38, 40, 41, 43, 44, 46, 47), "pose": (31, 32, 33, 34, 35)}
    for moved, idx in movable.items():
        shifted = landmarks.clone()
        shifted[..., list(idx), :] += torch.randn(len(idx), 2) * 2.0
        change = group_changes(encoder, base, shifted)
        assert change[moved] > 1e-2, (moved, change)
        assert all(change[name] == 0.0 for name in base if name != moved), (moved, change)


def test_opening_the_mouth_changes_only_the_lips_and_jaw_groups():
    torch.manual_seed(0)
    encoder = MotionEncoder({"lips": 8, "jaw": 4, "brows": 4, "eyes": 4, "pose": 4}, hidden=32)
    closed = faces(3, 2)
    base = encoder.groups(encoder(closed, RES))
    opened = closed.clone()
    opened[..., 48:68, 1] += torch.linspace(0.0, 1.5, 20)  # the lips part
    opened[..., [57, 58, 59, 65, 66, 67], 1] += 1.5         # the lower lip drops most
    opened[..., 4:13, 1] += 2.0 * torch.sin(torch.linspace(0.3, math.pi - 0.3, 9))  # the chin drops
    change = group_changes(encoder, base, opened)
    assert change["lips"] > 1e-2 and change["jaw"] > 1e-2, change
    assert change["brows"] == change["eyes"] == change["pose"] == 0.0, change


def test_a_nod_of_the_whole_face_changes_only_the_pose_group():
    torch.manual_seed(0)
    encoder = MotionEncoder({"lips": 8, "jaw": 4, "brows": 4, "eyes": 4, "pose": 4}, hidden=32)
    level = faces(3, 2)
    angle = torch.tensor(0.1)  # a head that is also rolled a little: the nod squashes along the image vertical
    turn = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    pivot = torch.tensor([RES / 2, RES * 0.55])
    rolled = (level - pivot) @ turn.T + pivot
    base = encoder.groups(encoder(rolled, RES))
    squash, drop = 0.93, 1.0  # the corpus's full nod: 7% shorter, moved down
    nodded = rolled.clone()
    nodded[..., 1] = pivot[1] + (rolled[..., 1] - pivot[1]) * squash + drop
    change = group_changes(encoder, base, nodded)
    assert change["pose"] > 1e-2, change
    assert all(change[name] < 1e-4 for name in ("lips", "jaw", "brows", "eyes")), change  # float rounding only


def test_the_gaze_changes_only_the_eyes_group_and_an_absent_gaze_is_ignored():
    torch.manual_seed(0)
    encoder = MotionEncoder({"lips": 8, "jaw": 4, "brows": 4, "eyes": 4, "pose": 4}, hidden=32)
    landmarks = faces(3, 2)
    base = encoder.groups(encoder(landmarks, RES))
    gaze = torch.rand(3, 2, 2) * 2 - 1
    change = group_changes(encoder, base, landmarks, gaze, torch.ones(3, 2, dtype=torch.bool))
    assert change["eyes"] > 1e-2, change
    assert all(change[name] == 0.0 for name in base if name != "eyes"), change
    for values in (gaze, -gaze, torch.full_like(gaze, float("nan"))):  # masked: whatever the values, no gaze
        assert group_changes(encoder, base, landmarks, values, torch.zeros(3, 2)) == dict.fromkeys(base, 0.0)
    known = torch.tensor([True, False, True])[:, None].expand(3, 2)
    mixed = encoder.groups(encoder(landmarks, RES, gaze, known))["eyes"]
    assert torch.equal(mixed[1], base["eyes"][1]) and not torch.allclose(mixed[0], base["eyes"][0])


def test_reconstruction_error_counts_the_gaze_only_where_it_is_known():
    torch.manual_seed(0)
    encoder = MotionEncoder({"lips": 8, "jaw": 4, "brows": 4, "eyes": 4, "pose": 4}, hidden=32)
    landmarks, gaze = faces(2, 3), torch.rand(2, 3, 2) * 2 - 1
    known = torch.tensor([True, False])[:, None].expand(2, 3)
    with torch.no_grad():
        latent = encoder(landmarks, RES, gaze, known)
        before = encoder.group_errors(latent, landmarks, RES, gaze, known)
        total = encoder.reconstruction_error(latent, landmarks, RES, gaze, known)
        assert set(before) == set(LANDMARK_GROUPS) and before["eyes"].shape == (2, 3)
        assert torch.allclose(total, torch.stack(list(before.values())).mean(0))
        eyes_out = encoder.decoders["eyes"][-1].bias
        eyes_out[24:26] += 1.0  # the decoded gaze x and y move
        after = encoder.group_errors(latent, landmarks, RES, gaze, known)
        assert torch.equal(after["eyes"][1], before["eyes"][1])  # unknown gaze: not counted
        assert (after["eyes"][0] - before["eyes"][0]).abs().min() > 1e-3  # known gaze: counted
        assert all(torch.equal(after[name], before[name]) for name in before if name != "eyes")
        eyes_out[26] += 1.0  # the decoded presence moves: counted everywhere (its target is known everywhere)
        presence = encoder.group_errors(latent, landmarks, RES, gaze, known)
        assert (presence["eyes"][1] - after["eyes"][1]).abs().min() > 1e-3

