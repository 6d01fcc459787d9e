"""The speech a video is generated from: any file PyAV decodes (wav, flac, mp3, m4a, a video's audio track) at
any rate and channel count, read as mono 16 kHz float32 (``load_speech``), and a waveform made ready for the
speech encoder (``prepare_speech``: resampled, silent or too-short speech refused with what to give instead)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import av
import numpy as np
import torch
from scipy.signal import resample_poly

from common.errors import SeespeakerError
from lightning_modules.nets.encoders import MIN_SPEECH_SAMPLES, SpeechTooShortError

log = logging.getLogger("seespeaker.generate")

SAMPLE_RATE = 16000
FPS = 25
SILENCE_PEAK = 1e-3  # peak amplitude below which speech counts as silent
MAX_SECONDS = 20.0  # longer speech is cut to its first MAX_SECONDS for the condition


class GenerationError(SeespeakerError, ValueError):
    """Input or stage files that generation cannot use; the message names the file and what to do."""


class SilentSpeechError(SeespeakerError, ValueError):
    """Speech without signal: there is no voice to infer a face from."""


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


def to_mono(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """[N], [N, C] (soundfile's layout) or [C, N] with C <= 8 -> float32 mono [N]."""
    audio = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    audio = audio.astype(np.float32)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(f"speech must be [samples] or [samples, channels], got shape {audio.shape}")
    channel_axis = 1 if audio.shape[1] <= 8 and audio.shape[1] < audio.shape[0] else 0
    return audio.mean(axis=channel_axis)


def prepare_speech(audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mono 16 kHz float32 speech [N]; resampled with a log line; silent / too short -> clear errors."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    mono = to_mono(audio)
    if sample_rate != SAMPLE_RATE:
        g = math.gcd(int(sample_rate), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
        log.info("resampled speech from %d Hz to %d Hz (%d samples)", sample_rate, SAMPLE_RATE, len(mono))
    if len(mono) < MIN_SPEECH_SAMPLES:
        raise SpeechTooShortError(
            f"speech is {len(mono) / SAMPLE_RATE:.2f} s long, the speech encoder needs at least "
            f"{MIN_SPEECH_SAMPLES / SAMPLE_RATE:.2f} s; give a longer recording")
    peak = float(np.abs(mono).max())
    if not np.isfinite(peak):
        raise ValueError("speech holds NaN or infinite samples; check the audio file")
    if peak < SILENCE_PEAK:
        raise SilentSpeechError(
            f"speech is silent (peak amplitude {peak:.2e} < {SILENCE_PEAK:g}); give a recording with a voice in it")
    return torch.from_numpy(np.ascontiguousarray(mono[: int(MAX_SECONDS * SAMPLE_RATE)]))
