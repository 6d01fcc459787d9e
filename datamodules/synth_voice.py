"""The synthetic speakers' voices: a numpy source-filter synthesiser.

A glottal pulse train at the speaker's pitch (with intonation and jitter) is shaped by three formant
resonators whose frequencies are divided by the speaker's vocal-tract scale; speech is a sequence of
syllables (a consonant noise burst, a nasal or nothing, then a vowel with its own formants) under an
amplitude envelope, with short pauses. Each sample is labelled with its vowel so that the face renderer can
shape the mouth; :func:`frame_envelope` gives the loudness of the 40 ms of audio under each video frame.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from datamodules.sample import FPS, SAMPLE_RATE

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
VOWELS = "aeiou"
# Formants F1-F3 (Hz) of an average adult vocal tract (vocal-tract scale 1.0).
VOWEL_FORMANTS = np.array(
    [[730.0, 1090.0, 2440.0], [530.0, 1840.0, 2480.0], [270.0, 2290.0, 3010.0],
     [570.0, 840.0, 2410.0], [300.0, 870.0, 2240.0]]
)
FORMANT_BANDWIDTHS = np.array([80.0, 110.0, 160.0])
VOWEL_LOUDNESS = np.array([1.0, 0.85, 0.7, 0.9, 0.75])
NO_VOWEL = -1
ACCENT_PROBABILITY = 0.2  # share of vowels stressed in a clip of neutral mood
ACCENT_PITCH, ACCENT_GAIN = 0.08, 1.5  # a stressed vowel: f0 up to 8% higher, 1.5x louder
_FRICATIVE_SOS = butter(4, [2500.0, 7000.0], btype="bandpass", fs=SAMPLE_RATE, output="sos")
_BURST_SOS = butter(2, [800.0, 5000.0], btype="bandpass", fs=SAMPLE_RATE, output="sos")


@dataclass
class VoiceParams:
    """A speaker's voice: what the synthesiser uses and what is stored as ground truth."""

    f0: float  # mean pitch in Hz
    vocal_tract_scale: float  # > 1: a longer tract, formants divided by this
    intonation: float  # depth of the slow pitch movement (fraction of f0)
    jitter: float  # cycle-to-cycle pitch noise (fraction of f0)
    breathiness: float  # aspiration noise mixed into the source
    speech_rate: float  # syllables per second
    open_quotient: float = 0.6  # open share of each glottal cycle: higher, a laxer voice with a steeper spectral tilt

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}


def syllable_plan(seconds: float, rate: float, rng: np.random.Generator) -> list[tuple[str, int, int, int]]:
    """Segments ``(kind, start, end, vowel)`` covering ``seconds``: kinds pause, stop, fricative, nasal, vowel."""
    total = int(round(seconds * SAMPLE_RATE))
    ms = SAMPLE_RATE // 1000
    plan, t = [], int(rng.uniform(0.0, 0.12) * SAMPLE_RATE)
    vowel_ms = 1000.0 / rate * 0.7
    while t < total:
        if plan and rng.random() < 0.12:
            t += int(rng.uniform(80, 220) * ms)
            continue
        kind = rng.choice(["stop", "fricative", "nasal", "none"], p=[0.35, 0.25, 0.2, 0.2])
        if kind != "none":
            length = int(rng.uniform(35, 70) * ms)
            plan.append((str(kind), t, min(t + length, total), NO_VOWEL))
            t += length
        length = int(rng.uniform(0.7, 1.3) * vowel_ms * ms)
        plan.append(("vowel", t, min(t + length, total), int(rng.integers(len(VOWELS)))))
        t += length + int(rng.uniform(10, 40) * ms)
    return [p for p in plan if p[1] < p[2]]


def pitch_contour(voice: VoiceParams, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-sample f0: a slow intonation curve, a falling declination and smoothed jitter."""
    t = np.arange(n) / SAMPLE_RATE
    phase = rng.uniform(0, 2 * np.pi)
    curve = voice.intonation * np.sin(2 * np.pi * rng.uniform(0.4, 0.9) * t + phase)
    declination = -0.04 * t / max(t[-1], 1e-6)
    steps = rng.normal(0.0, voice.jitter, size=n // 80 + 2)
    jitter = np.interp(np.arange(n) / 80.0, np.arange(len(steps)), steps)
    return voice.f0 * np.exp(curve + declination + jitter)


def glottal_source(f0: np.ndarray, breathiness: float, rng: np.random.Generator, open_phase: float) -> np.ndarray:
    """A glottal pulse train (smoothed sawtooth, strongest harmonics at the bottom) plus aspiration noise."""
    phase = np.cumsum(f0 / SAMPLE_RATE) % 1.0
    pulse = np.where(phase < open_phase, np.sin(np.pi * phase / open_phase) ** 2, 0.0)
    pulse = np.diff(pulse, prepend=0.0) * 20.0
    return pulse + breathiness * rng.normal(0.0, 1.0, size=len(f0))


def resonate(signal: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """A cascade of second-order resonators with unit gain at 0 Hz (the vocal-tract filter)."""
    out = signal
    for freq, bw in zip(formants, FORMANT_BANDWIDTHS, strict=False):
        freq = min(freq, 0.45 * SAMPLE_RATE)
        r = np.exp(-np.pi * bw / SAMPLE_RATE)
        a = [1.0, -2.0 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r]
        out = lfilter([sum(a)], a, out)
    return out


def segment_envelope(n: int, attack: int, release: int) -> np.ndarray:
    """A raised-cosine attack and release around a flat top."""
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    if a:
        env[:a] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, a))
    if r:
        env[n - r:] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, r))
    return env


def synthesise(voice: VoiceParams, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(audio, vowel_of_each_sample)``: float32 mono 16 kHz peak-normalised to 0.9, and vowel ids (-1: none).
    Corpus version 1's speech: the same intonation, rate and loudness in every clip of a speaker."""
    n = int(round(seconds * SAMPLE_RATE))
    source = glottal_source(pitch_contour(voice, n, rng), voice.breathiness, rng, voice.open_quotient)
    return render_segments(source, syllable_plan(seconds, voice.speech_rate, rng), voice, rng)


@dataclass
class Speech:
    """A clip's speech with the prosody that made it: ``f0`` and ``accent`` per sample (accent 0-1: the raised
    pitch and loudness of a stressed syllable)."""

    audio: np.ndarray
    labels: np.ndarray
    f0: np.ndarray
    accent: np.ndarray


def speak(voice: VoiceParams, seconds: float, rng: np.random.Generator, mood: float) -> Speech:
    """Corpus version 2's speech: a clip's ``mood`` (-1 subdued .. 1 lively) widens its intonation, quickens it a
    little and stresses more syllables; a stressed vowel is sung higher (up to ACCENT_PITCH) and louder
    (ACCENT_GAIN). The speaker's mean pitch does not move with the mood, so the voice still says who is speaking."""
    n = int(round(seconds * SAMPLE_RATE))
    plan = syllable_plan(seconds, voice.speech_rate * (1.0 + 0.08 * mood), rng)
    accent, boost = np.zeros(n), []
    for kind, a, b, _ in plan:
        stressed = kind == "vowel" and rng.random() < ACCENT_PROBABILITY + 0.1 * mood
        if stressed:
            accent[a:b] = np.maximum(accent[a:b], np.sin(np.linspace(0.0, np.pi, b - a)) ** 0.5)
        boost.append(ACCENT_GAIN if stressed else 1.0)
    lively = replace(voice, intonation=voice.intonation * (1.0 + 0.3 * mood))
    f0 = pitch_contour(lively, n, rng) * np.exp(np.log1p(ACCENT_PITCH) * accent)
    source = glottal_source(f0, voice.breathiness, rng, voice.open_quotient)
    audio, labels = render_segments(source, plan, voice, rng, boost)
    return Speech(audio, labels, f0, accent)


def render_segments(source: np.ndarray, plan: list[tuple[str, int, int, int]], voice: VoiceParams,
                    rng: np.random.Generator, boost: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shape the glottal ``source`` into the planned segments (``boost``: a gain per segment); peak-normalise."""
    n = len(source)
    audio, labels = np.zeros(n), np.full(n, NO_VOWEL, dtype=np.int8)
    ms = SAMPLE_RATE // 1000
    for i, (kind, a, b, vowel) in enumerate(plan):
        length = b - a
        if kind == "vowel":
            formants = VOWEL_FORMANTS[vowel] / voice.vocal_tract_scale
            pad = min(a, 20 * ms)
            shaped = resonate(source[a - pad:b], formants)[pad:]
            gain = VOWEL_LOUDNESS[vowel] * rng.uniform(0.75, 1.1) * (boost[i] if boost else 1.0)
            audio[a:b] += gain * shaped * segment_envelope(length, 25 * ms, 45 * ms)
            labels[a:b] = vowel
        elif kind == "fricative":
            noise = sosfilt(_FRICATIVE_SOS, rng.normal(0.0, 1.0, length))
            audio[a:b] += 0.25 * noise * segment_envelope(length, 10 * ms, 10 * ms)
        elif kind == "stop":
            closure = length // 2
            burst = sosfilt(_BURST_SOS, rng.normal(0.0, 1.0, length - closure))
            audio[a + closure:b] += 0.45 * burst * np.exp(-np.arange(length - closure) / (8.0 * ms))
        elif kind == "nasal":
            hum = resonate(source[a:b], np.array([250.0, 1000.0, 2200.0]) / voice.vocal_tract_scale)
            audio[a:b] += 0.25 * hum * segment_envelope(length, 10 * ms, 10 * ms)
    audio += 1e-4 * rng.normal(0.0, 1.0, n)
    audio *= 0.9 / max(float(np.abs(audio).max()), 1e-6)
    return audio.astype(np.float32), labels


def frame_envelope(audio: np.ndarray) -> np.ndarray:
    """RMS loudness of the 640 samples (40 ms) of each 25 fps frame."""
    frames = len(audio) // SAMPLES_PER_FRAME
    chunks = audio[: frames * SAMPLES_PER_FRAME].reshape(frames, SAMPLES_PER_FRAME).astype(np.float64)
    return np.sqrt((chunks ** 2).mean(axis=1))


def frame_vowels(labels: np.ndarray) -> np.ndarray:
    """The vowel sounding at the centre of each frame (-1 where none)."""
    frames = len(labels) // SAMPLES_PER_FRAME
    centres = np.arange(frames) * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME // 2
    return labels[centres].astype(np.int64)


def frame_means(per_sample: np.ndarray) -> np.ndarray:
    """The mean of a per-sample track over each frame's 640 samples."""
    frames = len(per_sample) // SAMPLES_PER_FRAME
    return per_sample[: frames * SAMPLES_PER_FRAME].reshape(frames, SAMPLES_PER_FRAME).mean(axis=1)
