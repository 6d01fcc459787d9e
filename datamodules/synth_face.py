"""The synthetic speakers' faces: procedural drawing with OpenCV and the 68-point landmarks it puts them at.

Everything is laid out in a canonical 256-unit frame and scaled to the output resolution. The landmarks
(iBUG 300-W layout) are computed first and the features are drawn *from* them (face outline through the jaw
points, eyes and lips as the polygons of their points), so the landmarks lie on what is drawn. A speaker's
static layers (background, hair with strands, skin with texture and freckles, nose, brows) are drawn once;
each frame warps them by the small head motion and draws only the eyes (blinks) and the mouth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

CANONICAL = 256.0
HAIR_STYLES = ("short", "long", "curly")
HAIR_COLOURS = np.array([[35, 28, 24], [95, 62, 38], [196, 164, 108], [150, 72, 36], [150, 150, 152]], float)
IRIS_COLOURS = np.array([[92, 58, 30], [60, 100, 150], [70, 110, 70], [40, 30, 25]], float)
LIGHT_SKIN, DARK_SKIN = np.array([238, 203, 178], float), np.array([98, 62, 42], float)
NOD_DROP, NOD_SQUASH = 6.0, 0.07  # a full nod: the face 6 canonical units lower and 7% shorter
GAZE_REACH = (1.0, 0.35)  # how far a full gaze moves the iris: in iris radii across, eye half-heights down
MOUTH_INSIDE, TEETH = (42, 12, 18), (232, 226, 214)


@dataclass
class FaceParams:
    """A speaker's face, in canonical 256-unit coordinates (stored as ground truth)."""

    face_width: float  # half-width of the face at the eye line
    face_height: float  # eye line to chin
    jaw_squareness: float  # superellipse exponent of the jaw (2: round, 3.5: square)
    eye_spacing: float  # half the distance between the eye centres
    eye_size: float  # half-width of an eye
    skin_tone: float  # 0: light, 1: dark
    hair_colour: int  # index into HAIR_COLOURS
    hair_darkness: float  # multiplies the hair colour
    hair_style: int  # index into HAIR_STYLES
    iris_colour: int
    brow_thickness: float
    nose_width: float
    mouth_width: float  # half-width of the closed mouth
    lip_thickness: float
    freckles: float  # 0-1: density of the freckle pattern
    texture: float  # amplitude of the fine skin texture

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}

    def skin_rgb(self) -> np.ndarray:
        return LIGHT_SKIN + (DARK_SKIN - LIGHT_SKIN) * self.skin_tone


def eye_line(face: FaceParams) -> float:
    return 118.0 - 0.1 * (face.face_height - 92.0)


def jaw_points(face: FaceParams) -> np.ndarray:
    """Points 0-16: the jaw from the subject's right ear (image left) round the chin (8) to the left ear."""
    t = np.linspace(0.0, np.pi, 17)
    e = 2.0 / face.jaw_squareness
    c, s = np.cos(t), np.sin(t)
    x = CANONICAL / 2 - face.face_width * np.sign(c) * np.abs(c) ** e
    y = eye_line(face) + 0.1 * face.face_height + 0.9 * face.face_height * np.abs(s) ** e
    return np.stack([x, y], axis=1)


def neutral_landmarks(face: FaceParams) -> np.ndarray:
    """The 68 landmarks with eyes open and the mouth closed, canonical coordinates."""
    cx, ye, h, d, ew = CANONICAL / 2, eye_line(face), face.face_height, face.eye_spacing, face.eye_size
    pts = np.zeros((68, 2))
    pts[0:17] = jaw_points(face)
    brow_x = np.linspace(-1.1, 0.85, 5) * ew
    brow_y = ye - 13.0 - 4.0 * np.sin(np.linspace(0.3, np.pi - 0.3, 5))
    pts[17:22] = np.stack([cx - d + brow_x, brow_y], 1)
    pts[22:27] = np.stack([cx + d - brow_x[::-1], brow_y[::-1]], 1)
    nose_tip = ye + 0.42 * h
    pts[27:31] = np.stack([np.full(4, cx), np.linspace(ye - 2.0, nose_tip, 4)], 1)
    across = np.linspace(-1.0, 1.0, 5)
    pts[31:36] = np.stack([cx + across * face.nose_width, nose_tip + 4.0 - 3.0 * np.sqrt(np.abs(across))], 1)
    pts[36:48] = eye_points(face, 1.0, 1.0)
    pts[48:68] = mouth_points(face, 0.0, 1.0)
    return pts


def eye_points(face: FaceParams, open_left: float, open_right: float) -> np.ndarray:
    """Points 36-47: both eyes (outer, two upper, inner, two lower); 0 openness closes the upper lid."""
    cx, ye, d, ew = CANONICAL / 2, eye_line(face), face.eye_spacing, face.eye_size
    eh = 0.45 * ew
    out = []
    for sign, openness in ((-1.0, open_left), (1.0, open_right)):
        ex = cx + sign * d
        upper = ye - eh * openness + 0.5 * eh * (1.0 - openness)
        lower = ye + 0.55 * eh
        xs = np.array([-ew, -ew / 3, ew / 3, ew, ew / 3, -ew / 3])
        ys = np.array([ye, upper, upper, ye, lower, lower])
        if sign > 0:  # the subject's left eye starts at its inner corner
            xs = -xs[[3, 2, 1, 0, 5, 4]]
            ys = ys[[3, 2, 1, 0, 5, 4]]
        out.append(np.stack([ex + xs, ys], 1))
    return np.concatenate(out)


def mouth_points(face: FaceParams, opening: float, width: float) -> np.ndarray:
    """Points 48-67: outer lips (48-59) and inner lips (60-67) for an opening (0-1) and a width factor."""
    cx, ym = CANONICAL / 2, eye_line(face) + 0.68 * face.face_height
    mw = face.mouth_width * width
    gap = opening * 0.95 * face.mouth_width
    top, bottom = ym - 0.35 * gap, ym + 0.65 * gap
    lip = face.lip_thickness
    f_outer = np.array([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0, 0.6, 0.25, 0.0, -0.25, -0.6])
    bow = np.array([0.0, 0.15, -0.2, 0.0, -0.2, 0.15, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) * lip
    shape = 1.0 - np.abs(f_outer) ** 2
    upper = np.arange(12) <= 6
    y_outer = np.where(upper, ym - (0.35 * gap + lip) * shape + bow, ym + (0.65 * gap + 1.25 * lip) * shape)
    x_outer = cx + f_outer * mw * np.where(np.arange(12) % 6 == 0, 1.0, 1.0 + 0.05 * opening)
    f_inner = np.array([-0.8, -0.45, 0.0, 0.45, 0.8, 0.45, 0.0, -0.45])
    shape_in = 1.0 - (np.abs(f_inner) / 0.8) ** 2.2
    y_inner = np.where(np.arange(8) <= 4, ym - (ym - top) * shape_in, ym + (bottom - ym) * shape_in)
    x_inner = cx + f_inner * mw
    return np.concatenate([np.stack([x_outer, y_outer], 1), np.stack([x_inner, y_inner], 1)])


def _poly(points: np.ndarray, scale: float) -> np.ndarray:
    return np.round(points * scale * 16).astype(np.int32).reshape(-1, 1, 2)


def fill(img: np.ndarray, points: np.ndarray, scale: float, colour) -> None:
    cv2.fillPoly(img, [_poly(points, scale)], tuple(float(c) for c in colour), cv2.LINE_AA, shift=4)


def line(img: np.ndarray, points: np.ndarray, scale: float, colour, thickness: float, closed=False) -> None:
    cv2.polylines(img, [_poly(points, scale)], closed, tuple(float(c) for c in colour),
                  max(1, int(round(thickness * scale))), cv2.LINE_AA, shift=4)


def face_outline(face: FaceParams, marks: np.ndarray) -> np.ndarray:
    """The face polygon: the jaw points and a forehead arc over the top."""
    cx, ye = CANONICAL / 2, eye_line(face)
    t = np.linspace(0.0, np.pi, 15)[1:-1]
    top = np.stack([cx - face.face_width * np.cos(t), ye - 0.8 * face.face_height * np.sin(t) ** 0.8], 1)
    return np.concatenate([marks[0:17], top[::-1]])


def hair_layer(face: FaceParams, res: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colour with strands, mask behind the face, mask over the forehead) at ``res`` pixels."""
    s = res / CANONICAL
    cx, ye, w, h = CANONICAL / 2, eye_line(face), face.face_width, face.face_height
    colour = HAIR_COLOURS[face.hair_colour] * face.hair_darkness
    layer = np.empty((res, res, 3), np.float32)
    layer[:] = colour
    style = HAIR_STYLES[face.hair_style]
    for _ in range(220 if style == "curly" else 420):
        start = np.array([rng.uniform(cx - 1.3 * w, cx + 1.3 * w), rng.uniform(ye - 1.0 * h, ye + 1.1 * h)])
        tint = colour * rng.uniform(0.55, 1.45)
        if style == "curly":
            r = rng.uniform(3, 7) * s
            cv2.ellipse(layer, tuple(int(v) for v in start * s), (int(r), int(r * 0.8)), rng.uniform(0, 180),
                        0, rng.uniform(180, 330), tuple(float(c) for c in tint), 1, cv2.LINE_AA)
        else:
            angle = np.pi / 2 + (start[0] - cx) / w * 0.5 + rng.normal(0, 0.15)
            steps = np.arange(5)[:, None] * rng.uniform(5, 12)
            pts = start + steps * np.array([np.cos(angle), np.sin(angle)]) + rng.normal(0, 1.0, (5, 2))
            line(layer, pts, s, tint, 1)
    back = np.zeros((res, res), np.float32)
    front = np.zeros((res, res), np.float32)
    grow = 1.25 if style == "curly" else 1.1
    top = ye - 0.8 * h
    cv2.ellipse(front, (int(cx * s), int((ye - 0.3 * h) * s)), (int(w * grow * s), int((ye - 0.3 * h - top + 8) * s)),
                0, 180, 360, 1.0, -1, cv2.LINE_AA)
    fringe = ye - (0.52 + 0.08 * np.sin(np.linspace(0, 6 * np.pi, 40))) * h
    fringe_poly = np.concatenate([np.stack([np.linspace(cx - w * grow, cx + w * grow, 40), fringe], 1),
                                  [[cx + w * grow, ye], [cx - w * grow, ye]]])
    cut = np.zeros_like(front)
    fill(cut, fringe_poly, s, (1.0,))
    front = soften(np.clip(front - cut, 0, 1), s)
    if style == "long":
        xs = np.linspace(cx + 1.35 * w, cx - 1.35 * w, 30)
        ends = ye + (1.1 + 0.06 * np.sin(np.linspace(0, 5 * np.pi, 30)) - 0.25 * ((xs - cx) / w) ** 4 / 3.3) * h
        fill(back, np.concatenate([[[cx - 1.0 * w, ye - 0.7 * h], [cx + 1.0 * w, ye - 0.7 * h]],
                                   np.stack([xs, ends], 1)]), s, (1.0,))
    cv2.ellipse(back, (int(cx * s), int((ye - 0.1 * h) * s)), (int(w * grow * 1.05 * s), int(0.95 * h * s)),
                0, 0, 360, 1.0, -1, cv2.LINE_AA)
    return layer, soften(back, s)[..., None], front[..., None]


def soften(mask: np.ndarray, scale: float) -> np.ndarray:
    """A float mask with an anti-aliased edge."""
    return cv2.GaussianBlur(mask, (0, 0), 0.6 * scale)


def base_layer(face: FaceParams, res: int, rng: np.random.Generator, brows: bool = True) -> np.ndarray:
    """A speaker's static image (uint8 RGB): everything but the eyes and the mouth (and the brows, where they
    move: ``brows=False``), drawn once."""
    s = res / CANONICAL
    marks = neutral_landmarks(face)
    cx, ye, w, h = CANONICAL / 2, eye_line(face), face.face_width, face.face_height
    yy = np.linspace(0.0, 1.0, res, dtype=np.float32)[:, None, None]
    top_c, bottom_c = rng.uniform(120, 230, 3), rng.uniform(90, 210, 3)
    img = (top_c * (1 - yy) + bottom_c * yy) * np.ones((1, res, 1), np.float32)
    hair, back, front = hair_layer(face, res, rng)
    img = img * (1 - back) + hair * back
    skin = face.skin_rgb()
    fill(img, np.array([[cx - 0.5 * w, ye + 0.6 * h], [cx + 0.5 * w, ye + 0.6 * h],
                        [cx + 0.55 * w, CANONICAL], [cx - 0.55 * w, CANONICAL]]), s, skin * 0.8)
    cv2.ellipse(img, (int(cx * s), int(CANONICAL * s)), (int(1.9 * w * s), int(0.45 * h * s)), 0, 180, 360,
                tuple(float(c) for c in rng.uniform(30, 200, 3)), -1, cv2.LINE_AA)
    for sign in (-1, 1):
        cv2.ellipse(img, (int((cx + sign * w) * s), int((ye + 0.15 * h) * s)), (int(0.12 * w * s), int(0.2 * h * s)),
                    0, 0, 360, tuple(float(c) for c in skin * 0.9), -1, cv2.LINE_AA)
    mask = np.zeros((res, res), np.float32)
    fill(mask, face_outline(face, marks), s, (1.0,))
    mask = soften(mask, s)
    img = img * (1 - mask[..., None]) + skin_layer(face, res, rng) * mask[..., None]
    line(img, marks[27:31], s, skin * 0.82, 1.5)
    line(img, marks[31:36], s, skin * 0.7, 1.5)
    for i in (32, 34):
        cv2.circle(img, tuple(int(v) for v in marks[i] * s), max(1, int(1.6 * s)), tuple(float(c) for c in skin * 0.5),
                   -1, cv2.LINE_AA)
    if brows:
        draw_brows(img, face, marks[17:27] * s, s)
    for eye in (marks[36:40], marks[[45, 44, 43, 42]]):
        line(img, eye + np.array([0.0, -0.35 * face.eye_size]), s, skin * 0.8, 1)
    img = img * (1 - front) + hair * front
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_brows(img: np.ndarray, face: FaceParams, brows: np.ndarray, scale: float) -> None:
    """Both eyebrows (points 17-26, in pixels) in the colour of the hair."""
    colour = HAIR_COLOURS[face.hair_colour] * min(face.hair_darkness, 1.0) * 0.8
    line(img, brows[0:5], 1.0, colour, face.brow_thickness * scale)
    line(img, brows[5:10], 1.0, colour, face.brow_thickness * scale)


def skin_layer(face: FaceParams, res: int, rng: np.random.Generator) -> np.ndarray:
    """Skin colour with soft shading, a fine per-speaker texture and freckles (lost at 64 px)."""
    s = res / CANONICAL
    cx, ye, w, h = CANONICAL / 2, eye_line(face), face.face_width, face.face_height
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / s
    r2 = ((xx - cx) / w) ** 2 + ((yy - ye - 0.2 * h) / h) ** 2
    shade = (1.0 - 0.18 * np.clip(r2, 0, 1.5))[..., None]
    texture = cv2.GaussianBlur(rng.normal(0, 1, (res, res)).astype(np.float32), (0, 0), 0.7 * s)
    layer = face.skin_rgb().astype(np.float32) * shade + face.texture * texture[..., None] * 7.0
    count = int(face.freckles * 140)
    centres = np.stack([cx + rng.uniform(-0.75, 0.75, count) * w, ye + rng.uniform(0.1, 0.55, count) * h], 1)
    for centre in centres:
        cv2.circle(layer, tuple(int(v) for v in centre * s), max(1, int(round(rng.uniform(0.6, 1.4) * s))),
                   tuple(float(c) for c in face.skin_rgb() * rng.uniform(0.62, 0.8)), -1, cv2.LINE_AA)
    return layer


def head_motion(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Per frame (dx, dy, angle in degrees, scale): slow drift made of a few random sinusoids."""
    t = np.arange(frames)[:, None] / 25.0
    amps = np.array([3.0, 2.5, 2.5, 0.025])
    out = np.zeros((frames, 4))
    for _ in range(2):
        freq = rng.uniform(0.15, 0.6, 4)
        out += amps / 2 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, 4))
    out[:, 3] += 1.0
    return out


def pose_matrix(pose: np.ndarray, res: int, nod: float = 0.0) -> np.ndarray:
    """The 2 x 3 affine of a head pose, about the face centre, in pixels. A ``nod`` (0 level .. 1 down) moves the
    face down by NOD_DROP canonical units and foreshortens it vertically by NOD_SQUASH about the centre."""
    centre = (res / 2, res * 0.55)
    m = cv2.getRotationMatrix2D(centre, float(pose[2]), float(pose[3]))
    m[:, 2] += pose[:2] * res / CANONICAL
    if nod:
        squash = 1.0 - NOD_SQUASH * nod
        m[1] = squash * m[1]
        m[1, 2] += centre[1] * (1.0 - squash) + NOD_DROP * nod * res / CANONICAL
    return m


def draw_eyes(img: np.ndarray, face: FaceParams, marks: np.ndarray, openness: float, scale: float,
              gaze: tuple[float, float] = (0.0, 0.0)) -> None:
    """Eye whites, iris and pupil inside the (already transformed) eye polygons; a lash line when closed. ``gaze``
    (x, y in -1..1) moves the irises within the eyes."""
    iris = IRIS_COLOURS[face.iris_colour]
    for eye in (marks[36:42], marks[42:48]):
        if openness > 0.15:
            fill(img, eye, 1.0, (238, 234, 228))
            centre = eye.mean(axis=0)
            height = np.linalg.norm(eye[1] - eye[5]) * 0.5
            r = 0.42 * np.linalg.norm(eye[3] - eye[0]) * 0.5
            if gaze[0] or gaze[1]:
                centre = centre + np.array([gaze[0] * GAZE_REACH[0] * r, gaze[1] * GAZE_REACH[1] * height])
            axes = (max(1, int(r)), max(1, int(min(r, height))))
            c = tuple(int(v) for v in centre)
            cv2.ellipse(img, c, axes, 0, 0, 360, tuple(float(v) for v in iris), -1, cv2.LINE_AA)
            cv2.ellipse(img, c, (max(1, axes[0] // 2), max(1, axes[1] // 2)), 0, 0, 360, (12, 10, 10), -1, cv2.LINE_AA)
        line(img, eye[[0, 1, 2, 3]], 1.0, (40, 28, 24), 1.2 * scale)


def draw_mouth(img: np.ndarray, face: FaceParams, marks: np.ndarray, opening: float, scale: float) -> None:
    """Lips (outer polygon), the dark inside and a band of teeth (inner polygon) from transformed landmarks."""
    lip = face.skin_rgb() * np.array([0.82, 0.55, 0.55]) + np.array([20, 0, 5])
    fill(img, marks[48:60], 1.0, lip)
    inner = marks[60:68]
    if opening > 0.04:
        fill(img, inner, 1.0, MOUTH_INSIDE)
        teeth = inner[[0, 1, 2, 3, 4]].copy()
        band = np.concatenate([teeth, teeth[::-1] + np.array([0.0, 0.22 * (inner[6, 1] - inner[2, 1])])])
        fill(img, band, 1.0, TEETH)
    line(img, inner[[0, 1, 2, 3, 4]], 1.0, lip * 0.55, 1.0 * scale)


def render_frame(base: np.ndarray, face: FaceParams, neutral: np.ndarray, pose: np.ndarray, eye_open: float,
                 opening: float, width: float) -> tuple[np.ndarray, np.ndarray]:
    """One frame (uint8 RGB) and its 68 landmarks in pixels; ``neutral`` is :func:`neutral_landmarks` of the face."""
    res = base.shape[0]
    scale = res / CANONICAL
    marks = neutral.copy()
    marks[36:48] = eye_points(face, eye_open, eye_open)
    marks[48:68] = mouth_points(face, opening, width)
    m = pose_matrix(pose, res)
    pixels = marks * scale @ m[:, :2].T + m[:, 2]
    img = cv2.warpAffine(base, m, (res, res), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    draw_eyes(img, face, pixels, eye_open, scale)
    draw_mouth(img, face, pixels, opening, scale)
    return img, pixels.astype(np.float32)
