"""The reference SyncNet pipeline's frame extraction: frames written as JPEG files and read back.

syncnet_python's ``run_syncnet.py`` extracts a video's frames with ``ffmpeg -y -i VIDEO -threads 1 -f image2
%06d.jpg`` (no quality option) and reads them with OpenCV, so the frames its expert scores went through JPEG at
ffmpeg's defaults: the mjpeg encoder, full-range 4:2:0, and libavcodec's default rate control of 200 kb/s at the
video's frame rate, which lowers the quality of each frame after the first few. :func:`jpeg_roundtrip` runs the
frames through that same encoder, with the same defaults and frame rate, in one encoder as ffmpeg does, and decodes
them with libavcodec's mjpeg decoder (OpenCV's libjpeg may round a few values differently).
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def jpeg_roundtrip(frames: np.ndarray, fps: float = 25.0) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] -> the same frames after ffmpeg's default JPEG extraction, uint8 [T, H, W, 3]."""
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"jpeg_roundtrip needs uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width + width % 2, height + height % 2, "yuvj420p"
    rate = Fraction(fps).limit_denominator(1001)
    encoder.time_base, encoder.framerate = 1 / rate, rate
    decoder = av.CodecContext.create("mjpeg", "r")
    out: list[np.ndarray] = []

    def decode(packets) -> None:
        for packet in packets:
            out.extend(frame.to_ndarray(format="rgb24")[:height, :width] for frame in decoder.decode(packet))

    for index, image in enumerate(frames):
        if width % 2 or height % 2:  # 4:2:0 needs even sides: pad by edge pixels, cropped after decoding
            image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
        frame.pts = index
        decode(encoder.encode(frame))
    decode(encoder.encode(None))
    return np.stack(out)
