"""One source item -> encoded clips (or a skip with its reason). Runs inside the worker processes."""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field

import cv2
import numpy as np

from datamodules.prepare import align, faces, media
from datamodules.prepare.listing import SourceItem, printable
from datamodules.sample import FPS, SAMPLE_RATE, Clip, ClipMeta, encode_clip, make_key

ANNOTATION_SLACK_S = 0.5  # an annotation may end this far past the decoded duration (rounding of mm:ss)


@dataclass
class PrepareOptions:
    """How clips are cut, filtered and cropped."""

    resolution: int = 256
    clip_seconds: float = 5.0  # 0: one clip per source item
    min_clip_seconds: float = 1.0
    min_face: float = 96.0  # smallest crop square (source pixels) accepted
    max_lost_fraction: float = 0.05
    max_av_mismatch: float = 0.2  # seconds
    detect_every: int = 5
    detect_size: int = 640
    jpeg_quality: int = 95


@dataclass
class SourceResult:
    """What became of one source item: its encoded samples, or the reason it was skipped."""

    source_id: str
    outcome: str  # "written" | "skipped"
    reason: str = ""
    detail: str = ""
    split: str = "train"
    samples: list[dict] = field(default_factory=list)
    clip_skips: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # CPU time the worker spent on this item


class Skip(Exception):
    """A clip or item rejected by a quality filter."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def process_item(item: SourceItem, opts: PrepareOptions) -> SourceResult:
    """Decode, track, align and encode every clip of ``item``; never raises."""
    cv2.setNumThreads(1)
    cpu_start = time.process_time()
    result = SourceResult(item.source_id, "skipped", split=item.split, notes=list(item.notes))
    try:
        if item.problem:
            reason, _, detail = item.problem.partition(": ")
            raise Skip(reason, detail or item.problem)
        _process(item, opts, result)
    except (Skip, media.MediaError) as exc:
        result.reason, result.detail = exc.reason, exc.detail
    except Exception as exc:  # a bug must not stop a long run; it is recorded with its traceback
        result.reason, result.detail = "internal_error", f"{exc!r}\n{traceback.format_exc(limit=4)}"
    if result.samples:
        result.outcome, result.reason, result.detail = "written", "", ""
    elif result.clip_skips and result.reason == "":
        result.reason, result.detail = result.clip_skips[0]["reason"], result.clip_skips[0]["detail"]
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def _process(item: SourceItem, opts: PrepareOptions, result: SourceResult) -> None:
    info = media.probe(item.path)
    end = info.duration if item.end is None else item.end
    past_end = item.end is not None and (item.end > info.duration + ANNOTATION_SLACK_S or item.start >= info.duration)
    if info.duration > 0 and past_end:
        raise Skip("annotation_past_end",
                   f"{item.start:.2f}-{item.end:.2f} s but the video lasts {info.duration:.2f} s")
    audio_path = item.audio_path or item.path
    if not item.audio_path and not info.has_audio:
        raise Skip("no_audio", f"{printable(item.path)[0]} has no audio track")
    if item.end is None and info.has_audio and not item.audio_path:
        gap = abs(info.audio_duration - info.duration)
        if gap > opts.max_av_mismatch:
            raise Skip("av_length_mismatch", f"audio {info.audio_duration:.2f} s, video {info.duration:.2f} s")
    roi, extra = crop_region(item, info)
    result.notes += extra.pop("notes", [])
    windows = clip_windows(item.start, end, opts)
    if not windows:
        raise Skip("too_short", f"{end - item.start:.2f} s is shorter than {opts.min_clip_seconds} s")
    tools = faces.versions()
    for j, (ws, we) in enumerate(windows):
        try:
            result.samples.append(_clip(item, opts, j, ws, we, roi, audio_path, info, {**extra, "face_tools": tools},
                                        result.notes))
        except (Skip, media.MediaError) as exc:
            result.clip_skips.append({"clip": j, "start": ws, "reason": exc.reason, "detail": exc.detail})


def crop_region(item: SourceItem, info: media.VideoInfo) -> tuple[tuple[int, int, int, int] | None, dict]:
    """The region searched for the face: HDTF's crop window rescaled to the download (with a margin).

    The whole frame is searched instead, with a note, where the window cannot apply: an already-split clip that is
    square has been cropped to its window already (the release's step 3; the long videos are 16:9), and a window
    wholly outside the frame was given for another resolution (a video missing from ``<G>_resolution.txt``).
    """
    if item.crop_window is None:
        return None, {}
    if item.end is None and info.width == info.height:
        return None, {"crop_window_annotated": list(item.crop_window), "notes": ["crop_window_applied_already"]}
    window = scale_window(item.crop_window, item.annotation_height, info.height)
    clamped = clamp_window(window, info.width, info.height)
    if clamped[2] < 1 or clamped[3] < 1:
        return None, {"crop_window_annotated": list(item.crop_window), "notes": ["crop_window_outside"]}
    notes = ["crop_window_clamped"] if clamped != window else []
    x, y, w, h = clamped
    margin = 0.75 * max(w, h)
    roi = (int(max(0, x - margin)), int(max(0, y - margin)),
           int(min(info.width, x + w + margin)), int(min(info.height, y + h + margin)))
    extra = {"crop_window_annotated": list(item.crop_window), "crop_window": [round(v, 2) for v in clamped],
             "crop_window_scale": info.height / item.annotation_height if item.annotation_height else 1.0,
             "notes": notes}
    return roi, extra


def scale_window(window, annotation_height: int | None, height: int) -> tuple[float, float, float, float]:
    """A crop window given for ``annotation_height``-pixel frames, in the pixels of a ``height`` download."""
    scale = height / annotation_height if annotation_height else 1.0
    return tuple(float(v) * scale for v in window)


def clamp_window(window, width: int, height: int) -> tuple[float, float, float, float]:
    """The window clamped to the frame."""
    x, y, w, h = window
    x0, y0 = min(max(0.0, x), float(width)), min(max(0.0, y), float(height))
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))


def clip_windows(start: float, end: float, opts: PrepareOptions) -> list[tuple[float, float]]:
    """Consecutive clip windows of ``clip_seconds`` (the last may be shorter, down to ``min_clip_seconds``)."""
    length = end - start
    if length < opts.min_clip_seconds:
        return []
    if opts.clip_seconds <= 0:
        return [(start, end)]
    count = int(math.floor(length / opts.clip_seconds + 1e-9))
    out = [(start + k * opts.clip_seconds, start + (k + 1) * opts.clip_seconds) for k in range(count)]
    rest = length - count * opts.clip_seconds
    if rest >= opts.min_clip_seconds:
        out.append((start + count * opts.clip_seconds, end))
    return out


def _clip(item, opts, j, ws, we, roi, audio_path, info, extra, notes) -> dict:
    frames, stats = media.read_frames(item.path, ws, we, roi)
    if stats["vfr"] and "vfr_resampled" not in notes:
        notes.append("vfr_resampled")
    if len(frames) < opts.min_clip_seconds * FPS:
        raise Skip("too_short", f"only {len(frames)} frames decoded in {ws:.2f}-{we:.2f} s")
    seconds = len(frames) / FPS
    audio, present = media.read_audio(audio_path, ws, seconds)
    if present < seconds - opts.max_av_mismatch:
        raise Skip("av_length_mismatch", f"{present:.2f} s of audio for {seconds:.2f} s of video")
    origin = np.array(roi[:2] if roi else (0, 0), np.float32)
    hint = None
    if item.face_hint is not None:
        hint = (item.face_hint[0] * info.width - origin[0], item.face_hint[1] * info.height - origin[1])
    track = faces.track_face(frames, opts.detect_every, opts.detect_size, hint,
                             give_up_fraction=opts.max_lost_fraction)
    if not track.detected.any():
        raise Skip("no_face", f"no face found in {ws:.2f}-{we:.2f} s")
    lost = 1.0 - track.found_fraction
    if lost > opts.max_lost_fraction:
        raise Skip("track_lost", f"face lost on {lost:.0%} of frames in {ws:.2f}-{we:.2f} s")
    landmarks = faces.fill_gaps(track.landmarks)
    crops, marks, boxes, outside = align.align_clip(frames, landmarks, opts.resolution)
    face_size = float(np.median(boxes[:, 2]))
    if face_size < opts.min_face:
        raise Skip("face_too_small", f"face crop {face_size:.0f} px < --min-face {opts.min_face:.0f} px")
    boxes[:, :2] += origin
    meta = ClipMeta(
        dataset=item.dataset, speaker=item.speaker, video=item.video, clip=j, split=item.split,
        num_frames=len(crops), fps=FPS, sample_rate=SAMPLE_RATE, start=ws, end=ws + seconds,
        resolution=opts.resolution, crop_box=[round(float(v), 2) for v in boxes.mean(0)],
        extra={**extra, "source": item.source_id, "source_path": printable(item.path)[0],
               "source_fps": round(info.fps, 3), "vfr": stats["vfr"], "detected_fraction": track.found_fraction,
               "crop_jitter": round(align.max_jitter(boxes), 5), "crop_outside": round(outside, 4),
               "crop_boxes": np.round(boxes, 2).tolist(), "notes": list(notes)},
    )
    clip = Clip(make_key(item.dataset, item.speaker, item.video, j), crops, audio, marks, meta)
    sample = encode_clip(clip, opts.jpeg_quality)
    sample["__split__"] = item.split
    return sample
