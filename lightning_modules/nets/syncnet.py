"""Audio-visual sync experts: the official SyncNet layout and a compact one for small crops.

Both take the same inputs and share one preprocessing, used by the syncnet stage, the lip
enhancer's sync loss and the LSE metrics:
- audio: MFCC windows [B, 1, 13, 20] (python_speech_features MFCC of int16-valued samples, 0.2 s);
- video: [B, 3, 5, S, S], five consecutive face crops, BGR, float 0..255, S = ``input_size``.
``SyncNetOfficial`` keeps the key names of the authors' ``syncnet_v2.model`` (a plain state_dict of
88 tensors, 13,640,256 values), so that file loads into it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from common.errors import SeespeakerError

WINDOW_FRAMES = 5
MFCC_WINDOW = 20


class SyncNetWeightsError(SeespeakerError, ValueError):
    """A weights file that does not fit the SyncNet layout it was loaded into."""


class SyncExpert(nn.Module):
    """Common interface of the sync experts (``forward_aud``, ``forward_lip``, ``preprocess``)."""

    input_size: int
    embedding_dim: int
    layout: str

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """Audio embedding [B, D] of MFCC windows [B, 1, 13, 20]."""
        features = self.netcnnaud(mfcc)
        return self.netfcaud(features.flatten(1))

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """Video embedding [B, D] of five-frame BGR 0..255 windows [B, 3, 5, S, S]."""
        features = self.netcnnlip(video)
        return self.netfclip(features.flatten(1))

    def forward(self, mfcc: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings ``(audio [B, D], video [B, D])``."""
        return self.forward_aud(mfcc), self.forward_lip(video)

    def preprocess(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames to the expert's input space: BGR, float 0..255, ``input_size`` square.

        - uint8 RGB frames [T, H, W, 3] (numpy or tensor) -> [T, 3, S, S], resized with OpenCV's
          bilinear resize on the uint8 image, as the reference evaluation does;
        - float frames in [-1, 1], RGB [B, T, 3, H, W] -> [B, T, 3, S, S], differentiable
          (torch bilinear, no antialias).
        """
        return preprocess_frames(frames, self.input_size)


def preprocess_frames(frames: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """See :meth:`SyncExpert.preprocess`."""
    if isinstance(frames, np.ndarray) or frames.dtype == torch.uint8:
        array = frames if isinstance(frames, np.ndarray) else frames.cpu().numpy()
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {array.dtype} {tuple(array.shape)}")
        resized = [
            frame if frame.shape[:2] == (size, size)
            else cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
            for frame in array
        ]
        stacked = np.ascontiguousarray(np.stack(resized)[..., ::-1])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).float()
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"expected float frames [B, T, 3, H, W] in [-1, 1], got {tuple(frames.shape)}")
    batch, steps = frames.shape[:2]
    flat = frames.reshape(batch * steps, *frames.shape[2:])
    if flat.shape[-2:] != (size, size):
        flat = nn.functional.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    bgr = (flat.flip(1) + 1.0) * 127.5
    return bgr.reshape(batch, steps, 3, size, size)


def video_windows(frames: torch.Tensor, starts: list[int] | torch.Tensor) -> torch.Tensor:
    """Five-frame windows [N, 3, 5, S, S] starting at ``starts`` of preprocessed frames [T, 3, S, S]."""
    index = torch.as_tensor(starts, device=frames.device)[:, None] + torch.arange(WINDOW_FRAMES, device=frames.device)
    return frames[index].permute(0, 2, 1, 3, 4)


def mfcc_windows(mfcc: torch.Tensor, starts: list[int] | torch.Tensor) -> torch.Tensor:
    """MFCC windows [N, 1, 13, 20] (columns 4i .. 4i+19) of an MFCC [13, F] for video frames ``starts``."""
    index = 4 * torch.as_tensor(starts, device=mfcc.device)[:, None] + torch.arange(MFCC_WINDOW, device=mfcc.device)
    return mfcc[:, index].permute(1, 0, 2).unsqueeze(1)


def _fc_head(embedding_dim: int, features: int = 512) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(features, features), nn.BatchNorm1d(features), nn.ReLU(), nn.Linear(features, embedding_dim)
    )


class SyncNetOfficial(SyncExpert):
    """SyncNet with the layer layout and key names of the authors' ``syncnet_v2.model`` (224 px crops)."""

    layout = "official"

    def __init__(self, embedding_dim: int = 1024):
        super().__init__()
        self.input_size = 224
        self.embedding_dim = embedding_dim
        self.weights_sha256: str | None = None
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 512, (5, 4), padding=0), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = _fc_head(embedding_dim)
        self.netfclip = _fc_head(embedding_dim)
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2), padding=0), nn.BatchNorm3d(96), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), padding=0), nn.BatchNorm3d(512), nn.ReLU(inplace=True),
        )

    def load_official_weights(self, path: str | Path) -> str:
        """Load ``syncnet_v2.model`` (a plain state_dict, read with ``weights_only=True``); returns its sha256.

        Only missing ``num_batches_tracked`` buffers are tolerated (the 2017 file has none); any other
        missing, unexpected or mis-shaped key raises :class:`SyncNetWeightsError` listing them.
        """
        path = Path(path)
        if not path.is_file():
            raise SyncNetWeightsError(f"SyncNet weights file {path} does not exist; give the path of syncnet_v2.model")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SyncNetWeightsError(
                f"{path} is not a loadable state_dict ({exc}); give the official syncnet_v2.model"
            ) from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SyncNetWeightsError(f"{path} does not hold a plain state_dict of tensors; give syncnet_v2.model")
        check_state_dict_layout(self, state, source=str(path))
        self.load_state_dict(state, strict=False)
        self.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        return self.weights_sha256


def check_state_dict_layout(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`SyncNetWeightsError` naming every key of ``state`` that does not fit ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        parts = [f"{label}: {', '.join(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)) if keys]
        raise SyncNetWeightsError(
            f"{source} does not match the {getattr(model, 'layout', type(model).__name__)} SyncNet layout; "
            + "; ".join(parts) + ". Give the official syncnet_v2.model, or a file exported by this layout."
        )


def _conv_bn(conv: nn.Module, channels: int, dims: int) -> list[nn.Module]:
    norm = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)
    return [conv, norm, nn.ReLU(inplace=True)]


class SyncNetCompact(SyncExpert):
    """A small sync expert for 64 px face crops with the official interface and key prefixes.

    Audio: four 3x3 conv blocks over the 13 x 20 MFCC. Video: a 5-frame 3D conv that collapses time, then
    stride-2 conv blocks down to 1/16 of the crop. Both end in a 1x1 projection that is flattened, not pooled,
    so that the audio branch keeps the order of its 20 MFCC columns and the video branch where the mouth is.
    """

    layout = "compact"

    def __init__(self, embedding_dim: int = 256, width: int = 32, input_size: int = 64):
        super().__init__()
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        self.weights_sha256: str | None = None
        w = width
        self.netcnnaud = nn.Sequential(
            *_conv_bn(nn.Conv2d(1, w, 3, padding=1), w, 2),
            *_conv_bn(nn.Conv2d(w, 2 * w, 3, stride=(1, 2), padding=1), 2 * w, 2),
            *_conv_bn(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), 4 * w, 2),
            *_conv_bn(nn.Conv2d(4 * w, 8 * w, 3, stride=2, padding=1), 8 * w, 2),
            *_conv_bn(nn.Conv2d(8 * w, w, 1), w, 2),
        )
        self.netcnnlip = nn.Sequential(
            *_conv_bn(nn.Conv3d(3, w, (5, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2)), w, 3),
            *_conv_bn(nn.Conv3d(w, 2 * w, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), 2 * w, 3),
            *_conv_bn(nn.Conv3d(2 * w, 4 * w, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), 4 * w, 3),
            *_conv_bn(nn.Conv3d(4 * w, 8 * w, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), 8 * w, 3),
            *_conv_bn(nn.Conv3d(8 * w, w, 1), w, 3),
        )
        with torch.no_grad():  # feature sizes from a probe in eval mode (no batch-norm statistics touched)
            self.eval()
            audio_features = self.netcnnaud(torch.zeros(1, 1, 13, MFCC_WINDOW)).numel()
            video_features = self.netcnnlip(torch.zeros(1, 3, WINDOW_FRAMES, input_size, input_size)).numel()
            self.train()
        self.netfcaud = _fc_head(embedding_dim, audio_features)
        self.netfclip = _fc_head(embedding_dim, video_features)

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """Video embedding [B, D] of five-frame BGR 0..255 windows [B, 3, 5, S, S] (scaled to [-1, 1] inside)."""
        return super().forward_lip(video / 127.5 - 1.0)


def build_syncnet(layout: str = "official", **sizes) -> SyncExpert:
    """A sync expert by layout: ``official`` (``embedding_dim``) or ``compact`` (``embedding_dim``, ``width``,
    ``input_size``)."""
    builders = {"official": SyncNetOfficial, "compact": SyncNetCompact}
    if layout not in builders:
        raise ValueError(f"unknown SyncNet layout {layout!r}; choose one of {sorted(builders)}")
    try:
        return builders[layout](**sizes)
    except TypeError as exc:
        raise ValueError(f"SyncNet layout {layout!r} does not take these sizes {sizes}: {exc}") from exc


def load_official_syncnet(path: str | Path, device: str | torch.device = "cpu") -> SyncNetOfficial:
    """The official SyncNet with ``syncnet_v2.model`` loaded, in eval mode on ``device``."""
    model = SyncNetOfficial()
    model.load_official_weights(path)
    return model.eval().to(device)
