"""How a synthetic head moves while it talks (corpus version 2), and the truth of every motion.

Each motion is driven the way it is in real speech:

- the lips open with the loudness of the frame's audio and spread or round with the vowel; the jaw follows the
  lips a frame behind, dropping the chin (the lower face is warped, not only the landmarks moved);
- the brows rise with emphasis: a stressed syllable's pitch and loudness peak (:func:`emphasis`), quickly up and
  slowly down; a clip's mood, carried by its prosody (:func:`datamodules.synth_voice.speak`), sets a resting
  expression (inner brows up or down). The mood is drawn per clip, never per speaker, so it tells nothing of
  who is speaking;
- the head nods with loudness and pitch (:func:`nod_driver`), a little behind them;
- the gaze holds, then shifts now and then (every GAZE_HOLD_SECONDS) to a new point;
- the eyes blink every BLINK_SECONDS;
- a slow drift of position, roll and scale as in version 1.

:func:`clip_motion` makes a clip's speech and per-frame motion without drawing a pixel (the tests measure
hundreds of clips that way); :func:`render_talking_frame` draws one frame of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.sample import FPS, MOTION_TRUTH_COLUMNS
from datamodules.synth_face import (
    CANONICAL,
    FaceParams,
    draw_brows,
    draw_eyes,
    draw_mouth,
    eye_line,
    eye_points,
    head_motion,
    mouth_points,
    pose_matrix,
)
from datamodules.synth_voice import (
    NO_VOWEL,
    SAMPLES_PER_FRAME,
    Speech,
    VoiceParams,
    frame_envelope,
    frame_means,
    frame_vowels,
    speak,
)

BLINK_SECONDS = (2.0, 5.0)  # between blinks: 12-30 blinks a minute, as people blink while talking
BLINK_PROFILE = np.array([0.55, 1.0, 1.0, 0.65, 0.2])  # eye closure over the frames of a blink
GAZE_HOLD_SECONDS = (0.8, 3.0)  # between gaze shifts: 0.33-1.25 shifts a second
BROW_RAISE = 7.0  # canonical units a full brow raise lifts the brows
BROW_TILT = 3.5  # canonical units a full expression lifts (or lowers) the inner ends of the brows
VOWEL_MOUTH_WIDTH = np.array([1.0, 1.08, 1.18, 0.8, 0.68])  # a e i o u: spread for i/e, rounded for o/u
JAW_DROP = 0.6  # a fully dropped jaw lowers the chin by this times the mouth's half-width


@dataclass
class ClipMotion:
    """A clip's speech and its per-frame motion."""

    speech: Speech
    mood: float  # -1 subdued .. 1 lively
    mouth: np.ndarray
    mouth_width: np.ndarray
    jaw: np.ndarray
    brow_raise: np.ndarray
    expression: np.ndarray
    gaze: np.ndarray  # [T, 2]
    nod: np.ndarray
    blink: np.ndarray
    drift: np.ndarray  # [T, 4]: dx, dy, roll (degrees), scale

    def truth(self) -> np.ndarray:
        """``T x 8`` float32 in the order of :data:`datamodules.sample.MOTION_TRUTH_COLUMNS`."""
        columns = {"jaw": self.jaw, "mouth": self.mouth, "brow_raise": self.brow_raise,
                   "expression": self.expression, "gaze_x": self.gaze[:, 0], "gaze_y": self.gaze[:, 1],
                   "nod": self.nod, "blink": self.blink}
        return np.stack([columns[name] for name in MOTION_TRUTH_COLUMNS], axis=1).astype(np.float32)


def mouth_track(audio: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mouth opening (0-1, from the frame's audio envelope) and width factor (from the vowel)."""
    env = frame_envelope(audio)
    opening = np.clip(1.1 * env / max(float(env.max()), 1e-6) - 0.06, 0.0, 1.0)
    vowels = frame_vowels(labels)
    target = np.where(vowels == NO_VOWEL, 1.0, VOWEL_MOUTH_WIDTH[np.maximum(vowels, 0)])
    width = np.empty_like(target)
    width[0] = target[0]
    for t in range(1, len(target)):
        width[t] = 0.4 * width[t - 1] + 0.6 * target[t]
    return opening, width


def follow(target: np.ndarray, rise: float, fall: float) -> np.ndarray:
    """A first-order follower of ``target`` that moves by ``rise`` of the gap going up and ``fall`` going down."""
    out = np.empty_like(target, dtype=np.float64)
    level = 0.0
    for t, value in enumerate(target):
        level += (rise if value > level else fall) * (value - level)
        out[t] = level
    return out


def standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def emphasis(pitch: np.ndarray, loudness: np.ndarray) -> np.ndarray:
    """Per-frame emphasis (0-1): where pitch and loudness both peak above the clip's own levels."""
    loud = loudness / max(float(loudness.max()), 1e-9)
    return np.clip(0.5 * standardised(np.log(pitch)), 0.0, 1.0) * np.clip(1.5 * loud, 0.0, 1.0)


def nod_driver(pitch: np.ndarray, loudness: np.ndarray) -> np.ndarray:
    """What the head nods with (0-1): mostly loudness, some pitch."""
    loud = loudness / max(float(loudness.max()), 1e-9)
    return np.clip(0.75 * loud + 0.25 * np.clip(0.5 * standardised(np.log(pitch)), 0.0, 1.0), 0.0, 1.0)


def gaze_track(frames: int, rng: np.random.Generator) -> np.ndarray:
    """[T, 2] gaze that holds for GAZE_HOLD_SECONDS, then moves to a new point in two frames: from the centre to
    a point away from it, from elsewhere back to the centre or to another point, as likely."""
    out = np.zeros((frames, 2))
    current = np.zeros(2)
    t = 0
    while t < frames:
        hold = int(rng.uniform(*GAZE_HOLD_SECONDS) * FPS)
        out[t:t + hold] = current
        t += hold
        away = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.9), rng.uniform(-0.6, 0.6)])
        target = np.zeros(2) if current.any() and rng.random() < 0.5 else away
        if t < frames:
            out[t] = (current + target) / 2
            t += 1
        current = target
    return out


def blink_closure(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame eye closure (0 open .. 1 shut), a blink every BLINK_SECONDS."""
    closure = np.zeros(frames)
    t = int(rng.uniform(0.2, BLINK_SECONDS[1]) * FPS)
    while t < frames:
        end = min(t + len(BLINK_PROFILE), frames)
        closure[t:end] = BLINK_PROFILE[: end - t]
        t += int(rng.uniform(*BLINK_SECONDS) * FPS)
    return closure


def clip_motion(voice: VoiceParams, frames: int, rng: np.random.Generator) -> ClipMotion:
    """A clip's speech (:func:`datamodules.synth_voice.speak`, in a mood drawn for the clip) and its motion."""
    mood = float(rng.uniform(-1.0, 1.0))
    speech = speak(voice, frames * SAMPLES_PER_FRAME / 16000.0, rng, mood)
    mouth, width = mouth_track(speech.audio, speech.labels)
    loudness, pitch = frame_envelope(speech.audio), frame_means(speech.f0)
    brows = follow(np.clip(1.6 * emphasis(pitch, loudness), 0.0, 1.0), rise=0.6, fall=0.15)
    expression = np.clip(0.8 * mood + 0.08 * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * np.arange(frames) / FPS
                                                     + rng.uniform(0, 2 * np.pi)), -1.0, 1.0)
    return ClipMotion(
        speech=speech, mood=mood, mouth=mouth, mouth_width=width, jaw=0.9 * follow(mouth, 0.6, 0.6),
        brow_raise=np.clip(brows + rng.normal(0.0, 0.02, frames), 0.0, 1.0), expression=expression,
        gaze=gaze_track(frames, rng), nod=follow(nod_driver(pitch, loudness), 0.35, 0.35),
        blink=blink_closure(frames, rng), drift=head_motion(frames, rng))


def jaw_weight(face: FaceParams, points: np.ndarray) -> np.ndarray:
    """How much of the chin's drop moves each canonical point [..., 2]: 0 above the mouth, 1 on the lower jaw,
    fading out over the neck and towards the ears."""
    cx, ye, h, w = CANONICAL / 2, eye_line(face), face.face_height, face.face_width
    mouth, chin = ye + 0.68 * h, ye + h
    x, y = points[..., 0], points[..., 1]
    down = np.clip((y - mouth) / (0.5 * (chin - mouth)), 0.0, 1.0)
    below = np.clip(1.0 - (y - chin - 2.0) / (0.35 * h), 0.0, 1.0)
    across = np.clip((1.15 * w - np.abs(x - cx)) / (0.45 * w), 0.0, 1.0)
    return smoothstep(down) * smoothstep(below) * smoothstep(across)


def smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3.0 - 2.0 * x)


def jaw_map(face: FaceParams, res: int) -> np.ndarray:
    """:func:`jaw_weight` of every pixel of a ``res`` frame (the same for every frame of a clip)."""
    s = res / CANONICAL
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32)
    return jaw_weight(face, np.stack([xx, yy], -1) / s)


def drop_jaw(base: np.ndarray, weights: np.ndarray, drop: float) -> np.ndarray:
    """The base image with the lower face moved down by ``drop`` canonical units (a smooth warp by ``weights``,
    :func:`jaw_map`)."""
    if drop < 0.05:
        return base
    res = base.shape[0]
    s = res / CANONICAL
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32)
    shift = drop * weights * s
    return cv2.remap(base, xx, (yy - shift).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def brow_points(neutral: np.ndarray, raise_: float, expression: float) -> np.ndarray:
    """Points 17-26 raised by ``raise_`` and with the inner ends tilted by ``expression``."""
    inner = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])  # 0 outer .. 1 inner end
    brows = neutral[17:27].copy()
    brows[:, 1] -= BROW_RAISE * raise_ + BROW_TILT * expression * inner
    return brows


def render_talking_frame(base: np.ndarray, face: FaceParams, neutral: np.ndarray, motion: ClipMotion, t: int,
                         weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t`` (uint8 RGB) and its 68 landmarks in pixels; ``base`` drawn without brows; ``weights`` the clip's
    :func:`jaw_map` (computed here when not given)."""
    res = base.shape[0]
    scale = res / CANONICAL
    openness = 1.0 - motion.blink[t]
    drop = JAW_DROP * face.mouth_width * motion.jaw[t]
    marks = neutral.copy()
    marks[0:17, 1] += drop * jaw_weight(face, neutral[0:17])
    marks[17:27] = brow_points(neutral, motion.brow_raise[t], motion.expression[t])
    marks[36:48] = eye_points(face, openness, openness)
    marks[48:68] = mouth_points(face, motion.mouth[t], motion.mouth_width[t])
    m = pose_matrix(motion.drift[t], res, motion.nod[t])
    pixels = marks * scale @ m[:, :2].T + m[:, 2]
    weights = jaw_map(face, res) if weights is None and drop >= 0.05 else weights
    img = cv2.warpAffine(drop_jaw(base, weights, drop), m, (res, res), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    draw_brows(img, face, pixels[17:27], scale)
    draw_eyes(img, face, pixels, openness, scale, tuple(motion.gaze[t]))
    draw_mouth(img, face, pixels, motion.mouth[t], scale)
    return img, pixels.astype(np.float32)
