"""The geometry of the motion groups: which landmarks each group holds, the affine face frame taken from rigid
points only, and each group's network input (its points in that frame; the gaze for the eyes, the frame itself
for the pose).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "lips": tuple(range(48, 68)),    # outer and inner lip contour
    "jaw": tuple(range(0, 17)),      # the jaw line: drops with the mouth
    "brows": tuple(range(17, 27)),   # eyebrows: raised with emphasis, the resting expression (inner-brow tilt)
    "eyes": tuple(range(36, 48)),    # both eye contours (blinks); the gaze is appended to this group's input
    "pose": tuple(range(27, 36)),    # the nose; the group also carries the face frame itself (the head pose)
}
FRAME_POINTS = (27, 28, 29, 30, 36, 39, 42, 45)  # rigid points only: the nose bridge and the four eye corners
FRAME_FEATURES = 7  # centre (2), cos and sin of the roll, horizontal and vertical scale, shear
# A gaze of 1 (-1..1) moves a pupil about a tenth of the eye line in the face frame: in those units the gaze weighs
# as much in the eyes group's reconstruction as the lids do (in gaze units it drowned them: the lids went unlearned).
GAZE_UNITS = 0.1
GAZE_FEATURES = 3   # gaze_x * m, gaze_y * m, m (m: whether the gaze is known)
EYE_POINTS = 2 * len(LANDMARK_GROUPS["eyes"])  # where the eyes group's gaze entries start in its input
_MIN_SCALE = 1e-3  # pixels: the smallest frame scale (a degenerate frame, e.g. a padding sample's zeros)


class FaceFrame(NamedTuple):
    """An affine face frame, every field with the landmarks' leading shape [...] (``centre`` [..., 2]).

    A point ``q`` of the frame is the pixel ``centre + u * (scale_x * q_x + shear * q_y) + n * scale_y * q_y`` with
    ``u = (cos, sin)`` the direction of the eye line (the roll) and ``n = (-sin, cos)`` its normal (down the face).
    """

    centre: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    scale_x: torch.Tensor  # the eye-corner span: left eye centre to right eye centre
    scale_y: torch.Tensor  # the eye line to the nose point 30, along the normal
    shear: torch.Tensor  # the eye-line midpoint to the nose point 30, along the eye line


def _nonzero(value: torch.Tensor) -> torch.Tensor:
    """``value`` with its magnitude at least :data:`_MIN_SCALE`, its sign kept (0 counts as positive)."""
    sign = torch.where(value < 0, -1.0, 1.0).to(value.dtype)
    return sign * value.abs().clamp_min(_MIN_SCALE)


def face_frame(landmarks: torch.Tensor) -> FaceFrame:
    """The affine face frame of landmarks [..., 68, 2] from rigid points only (:data:`FRAME_POINTS`), in float64.

    Its two axes are the eye line (left eye centre -> right eye centre, each the mean of its two corners) and the
    vector from the eye-line midpoint to the nose point 30; both move with the face under any affine map of the
    image, so points in this frame do not change when the whole face moves, rolls, scales, nods (a vertical
    foreshortening plus a shift) or shears: all of that is in the frame, which only the pose group carries."""
    points = landmarks.double()
    left = (points[..., 36, :] + points[..., 39, :]) / 2
    right = (points[..., 42, :] + points[..., 45, :]) / 2
    across, down = right - left, points[..., 30, :] - (left + right) / 2
    roll = torch.atan2(across[..., 1], across[..., 0])  # atan2(0, 0) = 0: a degenerate frame stays finite
    cos, sin = roll.cos(), roll.sin()
    scale_x = (across[..., 0] * cos + across[..., 1] * sin).clamp_min(_MIN_SCALE)
    scale_y = _nonzero(down[..., 1] * cos - down[..., 0] * sin)
    shear = down[..., 0] * cos + down[..., 1] * sin
    centre = points[..., list(FRAME_POINTS), :].mean(dim=-2)
    return FaceFrame(centre, cos, sin, scale_x, scale_y, shear)


def to_frame(points: torch.Tensor, frame: FaceFrame) -> torch.Tensor:
    """Pixels [..., K, 2] -> coordinates in ``frame`` [..., K, 2] (the frame's dtype)."""
    rel = points.to(frame.centre.dtype) - frame.centre[..., None, :]
    cos, sin = frame.cos[..., None], frame.sin[..., None]
    along = rel[..., 0] * cos + rel[..., 1] * sin
    normal = rel[..., 1] * cos - rel[..., 0] * sin
    qy = normal / frame.scale_y[..., None]
    qx = (along - frame.shear[..., None] * qy) / frame.scale_x[..., None]
    return torch.stack([qx, qy], dim=-1)


def from_frame(coords: torch.Tensor, frame: FaceFrame) -> torch.Tensor:
    """Coordinates in ``frame`` [..., K, 2] -> pixels [..., K, 2]: the inverse of :func:`to_frame`."""
    qx, qy = coords[..., 0], coords[..., 1]
    cos, sin = frame.cos[..., None], frame.sin[..., None]
    along = frame.scale_x[..., None] * qx + frame.shear[..., None] * qy
    normal = frame.scale_y[..., None] * qy
    return frame.centre[..., None, :] + torch.stack([along * cos - normal * sin, along * sin + normal * cos], dim=-1)


def frame_features(frame: FaceFrame, image_size: int) -> torch.Tensor:
    """The pose group's frame parameters [..., 7]: centre / size * 2 - 1, cos and sin of the roll, horizontal and
    vertical scale / size, shear / size."""
    return torch.cat([frame.centre / image_size * 2 - 1,
                      torch.stack([frame.cos, frame.sin, frame.scale_x / image_size, frame.scale_y / image_size,
                                   frame.shear / image_size], dim=-1)], dim=-1)


def frame_from_features(features: torch.Tensor, image_size: int) -> FaceFrame:
    """The inverse of :func:`frame_features` for decoded parameters [..., 7] (the roll's cos and sin renormalised,
    the scales kept away from 0)."""
    norm = features[..., 2:4].norm(dim=-1)
    level = norm < 1e-6
    cos = torch.where(level, 1.0, features[..., 2] / norm.clamp_min(1e-6))
    sin = torch.where(level, 0.0, features[..., 3] / norm.clamp_min(1e-6))
    return FaceFrame((features[..., 0:2] + 1) / 2 * image_size, cos, sin,
                     (features[..., 4] * image_size).clamp_min(_MIN_SCALE), _nonzero(features[..., 5] * image_size),
                     features[..., 6] * image_size)


def gaze_inputs(gaze: torch.Tensor | None, gaze_mask: torch.Tensor | None, leading: torch.Size,
                like: torch.Tensor) -> torch.Tensor:
    """The eyes group's gaze entries [..., 3]: (gaze_x * m, gaze_y * m) * GAZE_UNITS and m, m the mask (1 where
    ``gaze_mask`` is None and a gaze is given; 0 and zeros where no gaze is given). A masked gaze's values never
    matter (not even NaN)."""
    if gaze is None:
        return like.new_zeros(*leading, GAZE_FEATURES)
    gaze = gaze.to(like.device, like.dtype).expand(*leading, 2)
    m = like.new_ones(leading) if gaze_mask is None else gaze_mask.to(like.device, like.dtype).expand(leading)
    known = m[..., None]
    return torch.cat([torch.where(known > 0, gaze, 0.0) * known * GAZE_UNITS, known], dim=-1)


def group_inputs(landmarks: torch.Tensor, image_size: int, gaze: torch.Tensor | None = None,
                 gaze_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-group network inputs [..., n]: each group's points in the face frame (:func:`face_frame`), flattened;
    the eyes group adds the gaze (:func:`gaze_inputs`), the pose group the frame itself (:func:`frame_features`)."""
    landmarks = landmarks.float()
    frame = face_frame(landmarks)
    coords = to_frame(landmarks, frame).to(landmarks.dtype)
    out = {name: coords[..., idx, :].flatten(-2) for name, idx in LANDMARK_GROUPS.items()}
    out["eyes"] = torch.cat([out["eyes"], gaze_inputs(gaze, gaze_mask, landmarks.shape[:-2], landmarks)], dim=-1)
    out["pose"] = torch.cat([out["pose"], frame_features(frame, image_size).to(landmarks.dtype)], dim=-1)
    return out


def group_input_dims() -> dict[str, int]:
    """The size of each group's input (and of its decoder's output)."""
    extra = {"eyes": GAZE_FEATURES, "pose": FRAME_FEATURES}
    return {name: 2 * len(idx) + extra.get(name, 0) for name, idx in LANDMARK_GROUPS.items()}
