"""Small talking-face videos made from a real photo, for the preparation tests and benchmark.

The photo (scikit-image's ``astronaut``) is animated by small rotations, zooms and shifts (a known affine
per frame) and its mouth region is stretched with the envelope of a synthetic voiced signal, so the
landmarks a detector should find are the photo's reference landmarks moved by the known affine.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import av
import cv2
import numpy as np

FACE_REGION = (112, 16, 332, 236)  # x0, y0, x1, y1 of the astronaut photo around the face


@lru_cache(maxsize=4)
def base_face(size: int = 256) -> np.ndarray:
    """The photo cropped around the face and resized to ``size`` x ``size`` (RGB uint8)."""
    from skimage import data

    x0, y0, x1, y1 = FACE_REGION
    return cv2.resize(data.astronaut()[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=1)
def no_face_image(size: int = 256) -> np.ndarray:
    """A real photo without a face (scikit-image's ``coffee``)."""
    from skimage import data

    return cv2.resize(data.coffee(), (size, size), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=4)
def reference_landmarks(size: int = 256) -> np.ndarray:
    """dlib's landmarks (68 x 2) on the un-animated face."""
    from datamodules.prepare.faces import detect, landmarks_in

    image = base_face(size)
    boxes = detect(image)
    if not boxes:
        raise RuntimeError("no face found on the reference photo")
    return landmarks_in(image, boxes[0])


def speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated signal (harmonics of a gliding pitch through two formant bands)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = 130 + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k * (1.5 if 4 <= k <= 6 else 1.0) for k in range(1, 16))
    return (0.25 * voice * envelope(t, seed)).astype(np.float32)


def envelope(t: np.ndarray, seed: int = 0) -> np.ndarray:
    """Syllable envelope in [0, 1] at times ``t`` (about four syllables a second)."""
    phase = np.random.default_rng(seed + 1).uniform(0, 6)
    return np.clip(np.sin(2 * np.pi * 3.7 * t + phase), 0, None) ** 0.7


def animation(t: float, size: int = 256) -> np.ndarray:
    """The 2 x 3 affine that moves the photo at time ``t`` (small rotation, zoom and shift)."""
    angle = 3.0 * np.sin(2 * np.pi * t / 2.0)
    scale = 1.0 + 0.04 * np.sin(2 * np.pi * t / 2.6)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += (4 * np.sin(2 * np.pi * t / 3.0), 3 * np.cos(2 * np.pi * t / 2.2))
    return matrix


def expected_landmarks(t: float, size: int = 256) -> np.ndarray:
    """Where the animation puts the reference landmarks at time ``t``."""
    matrix = animation(t, size)
    return reference_landmarks(size) @ matrix[:, :2].T + matrix[:, 2]


def talking_frame(t: float, size: int = 256, seed: int = 0, face: bool = True) -> np.ndarray:
    """The frame at time ``t``: mouth opened with the envelope, then moved by :func:`animation`."""
    image = base_face(size) if face else no_face_image(size)
    if face:
        image = _open_mouth(image, float(envelope(np.array([t]), seed)[0]), size)
    return cv2.warpAffine(image, animation(t, size), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _open_mouth(image: np.ndarray, amount: float, size: int) -> np.ndarray:
    marks = reference_landmarks(size)
    centre = marks[48:68].mean(0)
    width = np.ptp(marks[48:68, 0])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    weight = np.exp(-(((xx - centre[0]) / (0.6 * width)) ** 2 + ((yy - centre[1]) / (0.5 * width)) ** 2))
    shift = amount * 0.06 * width * weight * np.sign(yy - centre[1])
    return cv2.remap(image, xx, yy - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def frame_times(seconds: float, fps: float, vfr: bool) -> np.ndarray:
    """Presentation times; with ``vfr`` the intervals alternate between 0.7 and 1.3 of the mean."""
    count = int(round(seconds * fps))
    if not vfr:
        return np.arange(count) / fps
    steps = np.where(np.arange(count) % 2 == 0, 0.7, 1.3) / fps
    return np.concatenate([[0.0], np.cumsum(steps[:-1])])


def write_video(path, seconds: float = 2.0, fps: float = 25, vfr: bool = False, audio: bool = True,
                face: bool = True, size: int = 256, seed: int = 0, audio_seconds: float | None = None,
                face_until: float | None = None) -> dict:
    """Write an H.264 (+ AAC) mp4 of the animated photo; returns its frame times and audio.

    ``face_until``: from this time on the frames show a photo without a face (a lost track).
    """
    times = frame_times(seconds, fps, vfr)
    sound = speech(seconds if audio_seconds is None else audio_seconds, 16000, seed)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "ultrafast"}
        stream.codec_context.time_base = Fraction(1, 1000)
        track = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        for t in times:
            shown = face and (face_until is None or t < face_until)
            frame = av.VideoFrame.from_ndarray(talking_frame(float(t), size, seed, shown), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if track is not None:
            _write_audio(container, track, sound)
    return {"times": times, "audio": sound, "size": size}


def _write_audio(container, track, sound: np.ndarray, chunk: int = 1024) -> None:
    pcm = (np.clip(sound, -1, 1) * 32767).astype(np.int16)
    for start in range(0, len(pcm), chunk):
        piece = pcm[start:start + chunk]
        frame = av.AudioFrame.from_ndarray(piece[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
        for packet in track.encode(frame):
            container.mux(packet)
    for packet in track.encode():
        container.mux(packet)
