"""ConRe pre-training: speech and face encoders aligned by a contrastive and a reconstruction loss.

Contrastive: symmetric InfoNCE with a learned temperature; other clips of the same speaker in the batch are
removed from the negatives. Reconstruction: a predictor regresses the (stop-gradient) face embedding from the
speech embedding, which is what the portrait stage conditions on. In training the speech is degraded
(``stage.speech_*``: random length, additive noise) so that short and noisy speech is in distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.nets.encoders import FaceEncoder, SpeechEncoder
from lightning_modules.nets.speech_degradation import SpeechDegradationConfig
from lightning_modules.retrieval import retrieval_accuracy
from lightning_modules.stagefile import StageFiles


@dataclass
class ConReConfig(SpeechDegradationConfig, StageConfig):
    """ConRe: the speech/face encoder sizes and the loss mix."""

    name: str = "conre"
    embed_dim: int = field(default=512, metadata={"help": "shared embedding size"})
    speech_width: int = field(default=256, metadata={"help": "speech encoder channels"})
    speech_layers: int = field(default=4, metadata={"help": "speech encoder conv blocks"})
    face_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512],
                                     metadata={"help": "face ResNet stage widths"})
    external_dim: int = field(default=0,
                              metadata={"help": "size of a frozen pre-trained speaker embedding fed in (0: none)"})
    temperature_init: float = field(default=0.07, metadata={"help": "initial InfoNCE temperature (learned)"})
    recon_weight: float = field(default=1.0, metadata={"help": "weight of the reconstruction (Re) term"})
    monitor: str = "val/retrieval_top1"
    monitor_mode: str = "max"
    # files written before speech degradation trained on clean, full-length speech
    file_defaults: ClassVar[dict[str, Any]] = {
        "speech_degradation": False, "speech_seconds": lambda _: [0.5, 2.0],
        "speech_snr_db": lambda _: [None, 20.0, 10.0, 0.0], "speech_noise": "white"}

    def validate(self) -> list[str]:
        errors = super().validate() + self.degradation_errors()
        if not 0 < self.temperature_init < 1:
            errors.append(f"stage.temperature_init must be in (0, 1), got {self.temperature_init}")
        return errors


def build_speech_encoder(cfg: ConReConfig) -> SpeechEncoder:
    return SpeechEncoder(cfg.embed_dim, cfg.speech_width, cfg.speech_layers, external_dim=cfg.external_dim)


def build_face_encoder(cfg: ConReConfig) -> FaceEncoder:
    return FaceEncoder(cfg.embed_dim, tuple(cfg.face_channels))


class ConReEncoders(NamedTuple):
    """The trained speech and face encoders, in eval mode."""

    speech: SpeechEncoder
    face: FaceEncoder


class ConReStage(StageModule):
    config_class = ConReConfig

    def __init__(self, cfg: ConReConfig, data, stages_dir: str = "", max_steps: int = 1000):
        super().__init__(cfg, data, stages_dir, max_steps)
        self.speech_encoder = build_speech_encoder(cfg)
        self.face_encoder = build_face_encoder(cfg)
        self.predictor = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.GELU(),
                                       nn.Linear(cfg.embed_dim, cfg.embed_dim))
        # 1-d: ZeRO flattens parameters
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / cfg.temperature_init)]))
        self.loss_weights = {"contrastive": 1.0, "recon": cfg.recon_weight}
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> ConReEncoders:
        """The trained encoders from the exported ``conre`` file."""
        stage = files["conre"]
        cfg = stage.typed_config(ConReConfig)
        speech, face = build_speech_encoder(cfg), build_face_encoder(cfg)
        speech.load_state_dict(stage.sub_state("speech_encoder", use_ema))
        face.load_state_dict(stage.sub_state("face_encoder", use_ema))
        return ConReEncoders(speech.eval(), face.eval())

    def embed(self, batch: dict[str, Any], degrade: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised (speech, face) embeddings of a batch; the face is the window's first frame (``degrade``:
        the speech degraded as ``stage.speech_*`` says, in training only)."""
        audio = self.cfg.training_speech(batch["audio"], degrade and self.training)
        speech = F.normalize(self.speech_encoder(audio), dim=-1)
        face = F.normalize(self.face_encoder(batch["frames"][:, 0]), dim=-1)
        return speech, face

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        speech, face = self.embed(batch, degrade=True)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * speech @ face.t()
        same = batch["speaker_index"][:, None] == batch["speaker_index"][None, :]
        eye = torch.eye(len(same), dtype=torch.bool, device=same.device)
        logits = logits.masked_fill(same & ~eye, float("-inf"))
        target = torch.arange(len(logits), device=logits.device)
        contrastive = 0.5 * (F.cross_entropy(logits, target, reduction="none")
                             + F.cross_entropy(logits.t(), target, reduction="none"))
        predicted = F.normalize(self.predictor(speech), dim=-1)
        recon = 1.0 - (predicted * face.detach()).sum(-1)
        return {"contrastive": contrastive, "recon": recon}

    def validation_metrics(self, batch: dict[str, Any]) -> None:
        speech, face = self.embed(batch)
        self._val_outputs.append((speech, face, batch["speaker_index"], batch["valid"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        speech, face, speaker, valid = (torch.cat(parts) for parts in zip(*self._val_outputs, strict=True))
        self._val_outputs.clear()
        if self.trainer.world_size > 1:  # every rank holds the same number of (padded) samples
            speech, face, speaker, valid = (self.all_gather(t).flatten(0, 1) for t in (speech, face, speaker, valid))
        if not valid.any():
            return
        top1, chance = retrieval_accuracy(speech[valid], face[valid], speaker[valid], k=1)
        self.log("val/retrieval_top1", top1, rank_zero_only=True)
        self.log("val/retrieval_chance", chance, rank_zero_only=True)

    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """The speech-to-face similarity matrix of the batch as an image (diagonal = matching pairs)."""
        with self.ema_scope():
            speech, face = self.embed(batch)
        sim = (speech @ face.t()).float().cpu()
        img = ((sim - sim.min()) / (sim.max() - sim.min() + 1e-8) * 255).to(torch.uint8)
        img = img.repeat_interleave(16, 0).repeat_interleave(16, 1)
        return {"similarity": Media(image=img[..., None].expand(-1, -1, 3).numpy(), caption="speech x face cosine")}
