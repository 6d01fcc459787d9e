"""The synthetic talking-face corpus: procedural speakers whose faces and voices are partially correlated.

Each speaker draws two latent factors that both the voice and the face carry, as body size and sex or age
do in real speakers. ``size`` sets the vocal tract (a larger speaker has a longer one, so lower formants) and
the face's width and height; ``register`` sets the pitch (with a small variation of its own and a little of
``size``, see :mod:`datamodules.synth_voice`) and the eye spacing and skin tone. In standard units each
correlated face attribute is ``sqrt(voice_share) * latent + sqrt(1 - voice_share) * noise``: by default
(``VOICE_SHARE``) the voice explains about half of its variance, so that speech-to-face is learnable but not a
lookup; ``voice_share`` sets it per corpus. Everything else
about a face (jaw shape, hair, eyes, freckles, skin texture) is independent of the voice.

A clip's mouth opening follows the loudness of the 40 ms of audio under each frame and its width follows the
vowel. In corpus version 2 (the default) the head moves as a talking head does -- the jaw with the lips, the brows
with emphasis and a per-clip mood, the gaze, nods with loudness, blinks -- and every clip stores the truth of each
motion per frame (``motion_truth.npy``; :mod:`datamodules.synth_motion`). Version 1 (``version=1``) is the corpus
of earlier results, byte for byte: the eyes blink now and then and the head drifts slightly, nothing else moves.
Frames are 25 fps, audio is 16 kHz with exactly 640 samples per frame. The same config and seed give the same
frames and audio, byte for byte.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from datamodules.sample import FPS, SPLITS, Clip, ClipMeta, make_key
from datamodules.shards import INDEX_NAME, ShardIndex, ShardSetWriter
from datamodules.synth_face import (
    HAIR_COLOURS,
    HAIR_STYLES,
    IRIS_COLOURS,
    FaceParams,
    base_layer,
    head_motion,
    neutral_landmarks,
    render_frame,
)
from datamodules.synth_motion import clip_motion, jaw_map, mouth_track, render_talking_frame
from datamodules.synth_voice import (
    NO_VOWEL,
    SAMPLES_PER_FRAME,
    VOWELS,
    VoiceParams,
    frame_vowels,
    synthesise,
)

DATASET = "synthetic"
CORPUS_VERSION = 2  # the generator's version, written into the index: results are keyed on it
CORPUS_VERSIONS = (1, 2)  # 1: only the mouth, blinks and a drift move; 2: a talking head with its motion's truth
VOICE_SHARE = 0.56  # default fraction of each correlated face attribute's variance set by the voice latents
# which voice latent (0: size, 1: register) sets each correlated face attribute: width, height, eye spacing, tone
ATTRIBUTE_LATENT = np.array([0, 0, 1, 1])
BLINK_PROFILE = np.array([0.45, 0.0, 0.0, 0.35, 0.8])


@dataclass
class SyntheticConfig:
    """What synthetic corpus to write."""

    speakers: int = field(default=24, metadata={"help": "number of speakers (at least 3: one per split)"})
    clips_per_speaker: int = field(default=4, metadata={"help": "clips written for each speaker"})
    seconds: float = field(default=2.0, metadata={"help": "clip length in seconds (rounded to whole 25 fps frames)"})
    resolution: int = field(default=256, metadata={"help": "frame size in pixels (square; 64 or more)"})
    seed: int = field(default=0, metadata={"help": "seed of speakers, speech and motion: same seed, same corpus"})
    shard_size: int = field(default=64, metadata={"help": "clips per WebDataset shard"})
    val_speakers_fraction: float = field(default=0.17,
                                         metadata={"help": "share of speakers held out for val (at least 1)"})
    test_speakers_fraction: float = field(default=0.17,
                                          metadata={"help": "share of speakers held out for test (at least 1)"})
    voice_share: float = field(default=VOICE_SHARE, metadata={"help": "fraction of each voice-linked face attribute's "
                               "variance (width, height, eye spacing, skin tone) that the voice sets, in (0, 1)"})
    version: int = field(default=CORPUS_VERSION, metadata={"help": "generator version: 2 a talking head with the "
                         "truth of its motion, 1 the corpus of earlier results (reproduced byte for byte)"})

    @property
    def frames(self) -> int:
        """Frames per clip."""
        return int(round(self.seconds * FPS))


@dataclass
class Speaker:
    """A synthetic speaker: its id, latent factors, face and voice."""

    id: str
    latents: dict[str, float]
    face: FaceParams
    voice: VoiceParams
    voice_share: float = VOICE_SHARE  # of the corpus it was drawn for

    def truth(self) -> dict:
        """Ground truth stored in every clip's ``meta.extra``."""
        return {"latents": {k: round(v, 6) for k, v in self.latents.items()},
                "face_attributes": self.face.to_dict(), "voice": self.voice.to_dict()}


def check_config(cfg: SyntheticConfig) -> None:
    """Raise ValueError naming the option, what is wrong and what to do."""
    problems = []
    if cfg.speakers < 3:
        problems.append(f"speakers={cfg.speakers}: need at least 3 speakers so that train, val and test each get one")
    if cfg.clips_per_speaker < 1:
        problems.append(f"clips_per_speaker={cfg.clips_per_speaker}: must be 1 or more")
    if not cfg.seconds > 0 or cfg.frames < 1:
        problems.append(f"seconds={cfg.seconds}: must give at least one 25 fps frame (0.04 s or more)")
    if cfg.resolution < 64:
        problems.append(f"resolution={cfg.resolution}: must be 64 pixels or more (the reader downsizes later)")
    if cfg.shard_size < 1:
        problems.append(f"shard_size={cfg.shard_size}: must be 1 or more")
    for name in ("val_speakers_fraction", "test_speakers_fraction"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            problems.append(f"{name}={getattr(cfg, name)}: must be in [0, 1)")
    if not 0.0 < cfg.voice_share < 1.0:
        problems.append(f"voice_share={cfg.voice_share}: must be in (0, 1), the fraction of a voice-linked face "
                        f"attribute's variance that the voice sets (default {VOICE_SHARE})")
    if cfg.version not in CORPUS_VERSIONS:
        problems.append(f"version={cfg.version}: must be one of {CORPUS_VERSIONS} (2, the default, moves brows, gaze, "
                        f"jaw and head and stores their truth; 1 reproduces the corpus of earlier results)")
    if not problems and len(split_speakers(cfg)["train"]) < 1:
        problems.append(f"val/test fractions {cfg.val_speakers_fraction}/{cfg.test_speakers_fraction} leave no "
                        f"training speaker out of {cfg.speakers}: lower them or add speakers")
    if problems:
        raise ValueError("invalid synthetic corpus options: " + "; ".join(problems))


def speaker_id(index: int) -> str:
    return f"spk{index:03d}"


def split_speakers(cfg: SyntheticConfig) -> dict[str, list[str]]:
    """Speaker-disjoint splits, seeded; val and test get at least one speaker each."""
    order = np.random.default_rng([cfg.seed, 7919]).permutation(cfg.speakers)
    n_val = max(1, int(round(cfg.val_speakers_fraction * cfg.speakers)))
    n_test = max(1, int(round(cfg.test_speakers_fraction * cfg.speakers)))
    ids = [speaker_id(int(i)) for i in order]
    return {"test": sorted(ids[:n_test]), "val": sorted(ids[n_test:n_test + n_val]),
            "train": sorted(ids[n_test + n_val:])}


def voice_linked_face(width: float, height: float, eyes: float, tone: float) -> dict[str, float]:
    """The four face attributes tied to the voice, from their standardised values."""
    return {"face_width": float(np.clip(62.0 + 5.0 * width, 46.0, 78.0)),
            "face_height": float(np.clip(92.0 + 6.0 * height, 74.0, 110.0)),
            "eye_spacing": float(np.clip(24.0 + 2.2 * eyes, 18.0, 30.0)),
            "skin_tone": float(np.clip(0.5 + 0.22 * tone, 0.0, 1.0))}


def draw_speaker(seed: int, index: int, voice_share: float = VOICE_SHARE) -> Speaker:
    """The speaker ``index`` of a seed (independent of how many speakers the corpus has)."""
    rng = np.random.default_rng([seed, index, 1])
    size, own_voice = rng.normal(size=2)
    noise = rng.normal(size=4)
    register = rng.normal()
    shared, own = np.sqrt(voice_share), np.sqrt(1.0 - voice_share)
    width, height, eyes, tone = shared * np.array([size, register])[ATTRIBUTE_LATENT] + own * noise
    voice = VoiceParams(
        f0=float(np.clip(150.0 * np.exp(-0.24 * register - 0.05 * size + 0.07 * own_voice), 70.0, 320.0)),
        vocal_tract_scale=float(np.exp(0.075 * size)),
        intonation=float(rng.uniform(0.04, 0.1)), jitter=float(rng.uniform(0.004, 0.012)),
        breathiness=float(rng.uniform(0.01, 0.05)), speech_rate=float(rng.uniform(3.5, 5.5)),
        open_quotient=float(np.clip(0.6 + 0.08 * size, 0.4, 0.8)),
    )
    voiced = voice_linked_face(width, height, eyes, tone)
    face_width, eye_spacing = voiced["face_width"], voiced["eye_spacing"]
    face = FaceParams(
        face_width=face_width, face_height=voiced["face_height"],
        jaw_squareness=float(rng.uniform(2.0, 3.4)), eye_spacing=eye_spacing,
        eye_size=float(eye_spacing * rng.uniform(0.38, 0.46)),
        skin_tone=voiced["skin_tone"],
        hair_colour=int(rng.integers(len(HAIR_COLOURS))), hair_darkness=float(rng.uniform(0.7, 1.2)),
        hair_style=int(rng.integers(len(HAIR_STYLES))), iris_colour=int(rng.integers(len(IRIS_COLOURS))),
        brow_thickness=float(rng.uniform(2.0, 4.5)), nose_width=float(face_width * rng.uniform(0.18, 0.26)),
        mouth_width=float(face_width * rng.uniform(0.3, 0.38)), lip_thickness=float(rng.uniform(3.0, 6.0)),
        freckles=float(rng.uniform(0.05, 1.0)), texture=float(rng.uniform(0.6, 1.6)),
    )
    return Speaker(speaker_id(index), {"size": float(size), "register": float(register), "voice_own": float(own_voice)},
                   face, voice, voice_share)


def ideal_retrieval(speakers: int, trials: int = 20000, seed: int = 0,
                    voice_share: float = VOICE_SHARE) -> tuple[float, float]:
    """(top-1, top-5) speech-to-face retrieval among ``speakers`` by an ideal reader that knows each voice's two
    latents exactly and reads the four correlated face attributes without error: the ceiling of any learned
    encoder pair on this corpus (a Monte Carlo of :func:`draw_speaker`'s model)."""
    rng = np.random.default_rng(seed)
    shared, own = np.sqrt(voice_share), np.sqrt(1.0 - voice_share)
    latents = rng.normal(size=(trials, speakers, 2))[..., ATTRIBUTE_LATENT]        # per face attribute
    faces = shared * latents + own * rng.normal(size=(trials, speakers, len(ATTRIBUTE_LATENT)))
    score = -((faces - shared * latents[:, :1]) ** 2).sum(-1)                       # the query is speaker 0's voice
    rank = (score[:, 1:] > score[:, :1]).sum(1)
    return float((rank == 0).mean()), float((rank < 5).mean())


def ideal_portrait(speaker: Speaker, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [R, R, 3], landmarks [68, 2]) of the face an ideal reader of the voice would draw: the four
    voice-linked attributes at their expectation given the voice's two latents, every other attribute at the
    middle of its range (the first hair style, hair and iris colour) and no freckles or fine texture (what
    averaging the speaker-specific patterns leaves), a fixed background; neutral pose, eyes open, mouth closed. Identity
    scores of this face are the ceiling of any speech-to-portrait model."""
    latents = np.sqrt(speaker.voice_share) * np.array([speaker.latents["size"], speaker.latents["register"]])
    face = middle_face(voice_linked_face(*latents[ATTRIBUTE_LATENT]))
    return neutral_frame(face, resolution, np.random.default_rng(0))


def middle_face(voiced: dict[str, float]) -> FaceParams:
    """The face with the given voice-linked attributes (:func:`voice_linked_face`) and every other attribute at the
    middle of its range (the first hair style, hair and iris colour; no freckles or fine texture)."""
    width, spacing = voiced["face_width"], voiced["eye_spacing"]
    return FaceParams(**voiced, jaw_squareness=2.7, eye_size=0.42 * spacing, hair_colour=0, hair_darkness=0.95,
                      hair_style=0, iris_colour=0, brow_thickness=3.25, nose_width=0.22 * width,
                      mouth_width=0.34 * width, lip_thickness=4.5, freckles=0.0, texture=0.0)


def neutral_frame(face: FaceParams, resolution: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [R, R, 3], landmarks [68, 2]) of a face in the neutral pose, eyes open, mouth closed."""
    base = base_layer(face, resolution, rng)
    return render_frame(base, face, neutral_landmarks(face), np.array([0.0, 0.0, 0.0, 1.0]), 1.0, 0.0, 1.0)


def blink_track(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame eye openness: 1 open, 0 shut; a blink every 2-5 s."""
    openness = np.ones(frames)
    t = int(rng.uniform(0.2, 3.0) * FPS)
    while t < frames:
        end = min(t + len(BLINK_PROFILE), frames)
        openness[t:end] = BLINK_PROFILE[: end - t]
        t += int(rng.uniform(2.0, 5.0) * FPS)
    return openness


def make_clip(speaker: Speaker, base: np.ndarray, cfg: SyntheticConfig, index: int, split: str) -> Clip:
    """One clip of a speaker: speech, the frames that say it and their landmarks.

    ``meta.extra`` holds the speaker's ground truth and, per frame, the mouth opening (0-1), the eye openness
    (1 open, 0 shut) and the vowel sounding at the frame's centre (``vowels``: one of ``aeiou`` or ``-``); in
    version 2 also the clip's ``mood``, and the clip carries the truth of every motion (``motion_truth``).
    """
    rng = np.random.default_rng([cfg.seed, int(speaker.id[3:]), index + 2])
    frames = cfg.frames
    images = np.empty((frames, cfg.resolution, cfg.resolution, 3), np.uint8)
    marks = np.empty((frames, 68, 2), np.float32)
    neutral = neutral_landmarks(speaker.face)
    truth, extra = None, {}
    if cfg.version == 1:
        audio, labels = synthesise(speaker.voice, frames * SAMPLES_PER_FRAME / 16000.0, rng)
        opening, width = mouth_track(audio, labels)
        eyes = blink_track(frames, rng)
        pose = head_motion(frames, rng)
        for t in range(frames):
            images[t], marks[t] = render_frame(base, speaker.face, neutral, pose[t], eyes[t], opening[t], width[t])
    else:
        motion = clip_motion(speaker.voice, frames, rng)
        audio, labels, opening, eyes = motion.speech.audio, motion.speech.labels, motion.mouth, 1.0 - motion.blink
        weights = jaw_map(speaker.face, cfg.resolution)
        for t in range(frames):
            images[t], marks[t] = render_talking_frame(base, speaker.face, neutral, motion, t, weights)
        truth, extra = motion.truth(), {"mood": round(motion.mood, 4)}
    video = f"v{index:03d}"
    extra = speaker.truth() | extra | {
        "mouth_opening": [round(float(v), 4) for v in opening], "eye_openness": [round(float(v), 3) for v in eyes],
        "vowels": "".join("-" if v == NO_VOWEL else VOWELS[v] for v in frame_vowels(labels))}
    meta = ClipMeta(dataset=DATASET, speaker=speaker.id, video=video, clip=0, split=split, num_frames=frames,
                    start=0.0, end=frames / FPS, resolution=cfg.resolution,
                    crop_box=[0.0, 0.0, float(cfg.resolution), float(cfg.resolution)], extra=extra)
    return Clip(make_key(DATASET, speaker.id, video, 0), images, audio, marks, meta, motion_truth=truth)


def speaker_clips(cfg: SyntheticConfig, index: int, split: str):
    """The clips of speaker ``index``, generated one at a time."""
    speaker = draw_speaker(cfg.seed, index, cfg.voice_share)
    base = base_layer(speaker.face, cfg.resolution, np.random.default_rng([cfg.seed, index, 0]),
                      brows=cfg.version == 1)
    for clip in range(cfg.clips_per_speaker):
        yield make_clip(speaker, base, cfg, clip, split)


def write_synthetic_corpus(out: str | Path, cfg: SyntheticConfig | None = None) -> ShardIndex:
    """Write the corpus as WebDataset shards under ``out`` (one folder per split) and return its index."""
    cfg = cfg or SyntheticConfig()
    check_config(cfg)
    out = Path(out)
    if (out / INDEX_NAME).exists() or any(next((out / s).glob("[!.]*.tar"), None) for s in SPLITS):
        raise ValueError(f"{out} already holds a shard set: choose an empty --out folder or delete it first")
    splits = split_speakers(cfg)
    split_of = {spk: split for split, ids in splits.items() for spk in ids}
    extra = {"synthetic": {"config": asdict(cfg), "speakers": splits, "voice_share": cfg.voice_share,
                           "version": cfg.version}}
    with ShardSetWriter(out, DATASET, shard_size=cfg.shard_size, prefix=DATASET, extra=extra) as writer:
        for index in range(cfg.speakers):
            for clip in speaker_clips(cfg, index, split_of[speaker_id(index)]):
                writer.write(clip)
    return ShardIndex.load(out)
