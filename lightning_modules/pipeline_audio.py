"""Reading the speech a video is generated from: any file PyAV decodes (wav, flac, mp3, m4a, a video's audio
track) at any rate and channel count, as mono 16 kHz float32."""
from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np

log = logging.getLogger("seespeaker.generate")

SAMPLE_RATE = 16000
FPS = 25


class GenerationError(ValueError):
    """Input or stage files that generation cannot use; the message names the file and what to do."""


def load_speech(path: str | Path) -> np.ndarray:
    """Decode ``path`` -> mono float32 [N] at 16 kHz in [-1, 1]; resampling and down-mixing are logged."""
    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"audio file {path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise GenerationError(f"{path} has no audio stream; give a speech recording (wav, flac, mp3, m4a)")
            stream = container.streams.audio[0]
            rate, channels = stream.rate or 0, stream.channels or 0
            resampler, chunks = None, []
            for frame in container.decode(stream):
                if resampler is None:  # keep the channels: averaging them keeps the level (FFmpeg's mix does not)
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=SAMPLE_RATE)
                chunks += [out.to_ndarray().mean(axis=0) for out in resampler.resample(frame)]
            if resampler is not None:
                chunks += [out.to_ndarray().mean(axis=0) for out in resampler.resample(None)]
    except av.error.FFmpegError as exc:
        raise GenerationError(f"{path} cannot be decoded as audio ({exc}); give a wav, flac, mp3 or m4a file") from exc
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise GenerationError(f"{path} holds no audio samples (zero length); give a recording with speech in it")
    if not np.isfinite(audio).all():
        raise GenerationError(f"{path} decodes to NaN or infinite samples; re-encode the file")
    if rate != SAMPLE_RATE or channels != 1:
        log.info("%s: %d Hz, %d channel(s) -> %d Hz mono (%.2f s)", path.name, rate, channels, SAMPLE_RATE,
                 audio.size / SAMPLE_RATE)
    return np.clip(audio, -1.0, 1.0)
