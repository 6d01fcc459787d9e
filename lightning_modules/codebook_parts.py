"""What the codebook stage needs besides its networks: its config, the input degradation, the back-projection and
the loading of an exported codebook stage (the losses: :mod:`lightning_modules.codebook_losses`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from common.devices import upload
from lightning_modules.base import StageConfig
from lightning_modules.face_perceptual import FacePerceptual  # noqa: F401  (the codebook's import of it)
from lightning_modules.nets.codeformer import CodeFormerSizes, CodeFormerWeightsError
from lightning_modules.nets.renderer import fidelity_like
from lightning_modules.stagefile import StageFile, StageFileError, load_stage_file

PHASES = ("vqgan", "transformer", "render")
RENDER_SOURCES = ("degraded", "autoencoder", "motion")
LAYOUTS = ("compact", "codeformer")
PERCEPTUAL_NETWORKS = ("feature_matching", "conre")  # lightning_modules/codebook_losses.py
BACK_PROJECTION_OPERATORS = ("bicubic", "area")


@dataclass
class CodebookConfig(StageConfig):
    """The VQ autoencoder, the code transformer and the renderer, trained in three phases."""

    name: str = "codebook"
    layout: str = field(default="compact", metadata={"help": "compact: this project's renderer (its own low-res "
                        "encoder, fusion, detail gate and back-projection; all three phases) | codeformer: "
                        "CodeFormer's own network (the low-res frame bicubic-upsampled to codeformer_size, its VQGAN "
                        "encoder, a codebook_size x code_dim codebook on the token grid, transformer_layers layers, "
                        "scale/shift fusion at every level between the grid and the image; no detail gate, no "
                        "back-projection), which loads CodeFormer's codeformer.pth through pretrained_path; it trains "
                        "the render phase only", "choices": LAYOUTS})
    pretrained_path: str = field(default="", metadata={"help": "codeformer layout: CodeFormer's released "
                                 "codeformer.pth ({'params_ema': state_dict}, the schema-default sizes), loaded "
                                 "unchanged as the render phase's starting weights instead of the exported transformer "
                                 "phase (its weights carry CodeFormer's non-commercial licence)"})
    codeformer_size: int = field(default=512, metadata={"help": "codeformer layout: the network's input and "
                                 "output size (512: the release; grid = size / 2^(levels-1)); the output is resized to "
                                 "data.hr_resolution"})
    adain: bool = field(default=True, metadata={"help": "codeformer layout: adaptive instance normalisation of the "
                        "looked-up codes to the encoder latent's channel mean and std (CodeFormer's inference "
                        "setting)"})
    phase: str = field(default="vqgan",
                       metadata={"help": "which part trains: vqgan | transformer | render", "choices": PHASES})
    base_channels: int = field(default=64, metadata={"help": "width of the VQ autoencoder's first level"})
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 4, 8],
                                           metadata={"help": "VQ autoencoder widths per level (high-res size / "
                                           "2^(levels-1) = token grid)"})
    blocks_per_level: int = field(default=2, metadata={"help": "residual blocks per VQ autoencoder level"})
    shortcut: bool = field(default=True, metadata={"help": "a linear path beside the convolutions of the VQ "
                           "encoder, decoder and low-resolution encoder (the image's average on the token grid in, "
                           "the latent bicubic-upsampled out): the convolutions learn the detail"})
    lr_base_channels: int = field(default=64, metadata={"help": "width of the low-resolution encoder's first level"})
    lr_channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 8],
                                              metadata={"help": "low-resolution encoder widths per level (its grid "
                                              "must equal the token grid)"})
    codebook_size: int = field(default=1024, metadata={"help": "number of codes"})
    code_dim: int = field(default=256, metadata={"help": "size of a code vector"})
    beta: float = field(default=0.25, metadata={"help": "commitment weight"})
    usage_decay: float = field(default=0.99, metadata={"help": "EMA decay of each code's usage share"})
    dead_threshold: float = field(default=0.03,
                                  metadata={"help": "a code is dead below this fraction of the uniform usage share"})
    reinit_every: int = field(default=100,
                              metadata={"help": "re-initialise dead codes every N steps of the vqgan phase (0: never)"})
    transformer_layers: int = field(default=9, metadata={"help": "code transformer layers"})
    transformer_width: int = field(default=512, metadata={"help": "code transformer width"})
    transformer_heads: int = field(default=8, metadata={"help": "code transformer attention heads"})
    temporal: bool = field(default=False,
                           metadata={"help": "temporal variant: the transformer also attends across a window's frames"})
    window_frames: int = field(default=8, metadata={"help": "frames per window of the temporal variant (training "
                               "windows: data.clip_frames)"})
    fidelity_weight: float = field(default=0.5, metadata={"help": "renderer fidelity w for validation and generation "
                                   "(0: codes only, 1: encoder path). compact layout: the fusion weight and the "
                                   "back-projection fraction (consistency), so at 1 the output's low frequencies "
                                   "follow the input; codeformer layout: CodeFormer's w, the weight of the fusion "
                                   "blocks' scale/shift from the input's encoder features (0: the predicted codes "
                                   "alone, the most restoration; 1: the most faithful to the input)"})
    render_trains: list[str] = field(default_factory=lambda: ["fusion"], metadata={"help": "networks the render phase "
                                     "trains: fusion (CodeFormer's recipe), plus decoder and/or lr_encoder"})
    render_source: str = field(default="degraded", metadata={"help": "render phase inputs: degraded (real low-res "
                               "frames, degraded) or autoencoder (through the exported autoencoder's round trip first, "
                               "as stage-2 frames are decoded from its latents, then degraded) or motion (re-rendered "
                               "by the exported motion_diffusion stage from each frame's own motion latent, audio and "
                               "real preceding frames, then degraded; clips of more than previous_frames frames give "
                               "most frames real predecessors)"})
    detail_gate: bool = field(default=False, metadata={"help": "a learned per-pixel gate g pulls the decoder's output "
                              "towards bicubic upsampling of the input by w * (1 - g) before back-projection, so that "
                              "at w = 1 the decoder adds only the detail the gate lets through (trains in the render "
                              "phase)"})
    residual_head: bool = field(default=False, metadata={"help": "compact layout: a zero-initialised head on the "
                                "decoder's last features adds detail to bicubic upsampling of the input; at fidelity w "
                                "the output is (1 - w) * decoded + w * (bicubic + detail), so the render phase starts "
                                "from bicubic at w = 1 (needs stage.shortcut; trains in the render phase)"})
    detail_scale: float = field(default=1.0, metadata={"help": "residual head: the weight s of its detail in "
                                "validation and generation, (1 - w) * decoded + w * (bicubic + s * detail); training "
                                "always adds all of it (s = 1). Below 1 it trades drawn detail for per-pixel "
                                "fidelity to the input; chosen on val"})
    consistency: bool = field(default=True, metadata={"help": "compact layout: back-project at fidelity w: "
                              "add w * bicubic-up(input - down(output)), so that at w = 1 the output's low "
                              "frequencies follow the low-res input and the decoder supplies the detail"})
    back_projection_operator: str = field(default="bicubic", metadata={"help": "the down operator of the "
                                          "back-projection: bicubic (antialiased; not the corpus's downsampler) | "
                                          "area (the corpus's own downsampler: on the corpus's exact downsamples "
                                          "it is an oracle; files from before the option record it)",
                                          "choices": BACK_PROJECTION_OPERATORS})
    l1_weight: float = field(default=1.0, metadata={"help": "weight of the L1 reconstruction loss"})
    codebook_weight: float = field(default=1.0, metadata={"help": "weight of the codebook + commitment terms"})
    perceptual_weight: float = field(default=0.0, metadata={"help": "weight of the perceptual loss (0: off) in "
                                     "perceptual_network's features"})
    perceptual_network: str = field(default="feature_matching", metadata={"help": "feature_matching: L1 between the "
                                    "discriminator's activations of the generated and the real frame (needs "
                                    "adversarial=true; no judge of the results tables) | conre: the seed's frozen "
                                    "ConRe face encoder (the network family that judges identity in the tables)",
                                    "choices": PERCEPTUAL_NETWORKS})
    adversarial: bool = field(default=False, metadata={"help": "hinge patch GAN (two optimizers: DDP, not DeepSpeed; "
                              "Lightning counts both optimizers' steps in trainer.max_steps)"})
    adversarial_weight: float = field(default=0.1, metadata={"help": "weight of the generator's hinge loss"})
    adversarial_warmup: int = field(default=0, metadata={"help": "generator steps over which the hinge loss's weight "
                                    "ramps linearly from 0 to adversarial_weight (the discriminator trains from the "
                                    "start)"})
    adversarial_grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip of both optimizers with "
                                         "adversarial=true (the stage clips itself)"})
    discriminator_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512],
                                              metadata={"help": "discriminator widths"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the code cross-entropy (transformer phase)"})
    latent_weight: float = field(default=1.0, metadata={"help": "weight of the latent L2 to the quantized high-res "
                                 "latent (transformer phase)"})
    degrade: float = field(default=0.5, metadata={"help": "strength of the blur / down-up / noise degradation of the "
                           "low-res input (0: off)"})
    hr_resolution: int = field(default=0, metadata={"help": "high-resolution size (set from data.hr_resolution)"})
    lr_resolution: int = field(default=0, metadata={"help": "low-resolution size (set from data.resolution)"})
    # files from before the codeformer layout, and from before the perceptual network and the back-projection
    # operator were options (they used the ConRe face encoder and the area downsampler), and from before the detail
    # scale (all of the residual head's detail)
    file_defaults: ClassVar[dict[str, Any]] = {"layout": "compact", "pretrained_path": "", "codeformer_size": 512,
                                               "adain": True, "perceptual_network": "conre",
                                               "back_projection_operator": "area", "adversarial_warmup": 0,
                                               "detail_scale": 1.0}

    def validate(self) -> list[str]:
        errors = super().validate()
        for name in ("base_channels", "lr_base_channels", "blocks_per_level", "codebook_size", "code_dim",
                     "transformer_layers", "window_frames"):
            if getattr(self, name) <= 0:
                errors.append(f"stage.{name} must be positive, got {getattr(self, name)}")
        if self.transformer_width % max(1, self.transformer_heads):
            errors.append(f"stage.transformer_width={self.transformer_width} must divide by "
                          f"transformer_heads={self.transformer_heads}")
        if not 0.0 <= self.fidelity_weight <= 1.0:
            errors.append(f"stage.fidelity_weight must be in [0, 1], got {self.fidelity_weight}")
        if not 0.0 <= self.detail_scale <= 1.0:
            errors.append(f"stage.detail_scale must be in [0, 1] (0: bicubic at w = 1, 1: all the residual head's "
                          f"detail), got {self.detail_scale}")
        if not self.render_trains or set(self.render_trains) - {"fusion", "decoder", "lr_encoder"}:
            errors.append(f"stage.render_trains must be a non-empty subset of [fusion, decoder, lr_encoder], "
                          f"got {self.render_trains}")
        if self.render_source not in RENDER_SOURCES:
            errors.append(f"stage.render_source must be one of {', '.join(RENDER_SOURCES)}, got {self.render_source!r}")
        errors += self.loss_errors()
        if not 0.0 < self.dead_threshold < 1.0:
            errors.append(f"stage.dead_threshold must be in (0, 1), got {self.dead_threshold}")
        if self.layout not in LAYOUTS:
            errors.append(f"stage.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        elif self.layout == "codeformer":
            errors += self.codeformer_errors()
        elif self.pretrained_path:
            errors.append("stage.pretrained_path loads CodeFormer's weights, which only the codeformer layout has: "
                          "set stage.layout=codeformer or drop stage.pretrained_path")
        if self.residual_head and not self.shortcut:
            errors.append("stage.residual_head reads the decoder's last features, which the shortcut decoder gives: "
                          "set stage.shortcut=true or stage.residual_head=false")
        return errors

    def loss_errors(self) -> list[str]:
        errors = []
        if self.perceptual_network not in PERCEPTUAL_NETWORKS:
            errors.append(f"stage.perceptual_network must be one of {', '.join(PERCEPTUAL_NETWORKS)}, got "
                          f"{self.perceptual_network!r}")
        elif self.perceptual_network == "feature_matching" and self.perceptual_weight > 0 and not self.adversarial:
            errors.append("stage.perceptual_network=feature_matching matches the discriminator's features: set "
                          "stage.adversarial=true, or stage.perceptual_weight=0, or stage.perceptual_network=conre")
        if self.back_projection_operator not in BACK_PROJECTION_OPERATORS:
            errors.append(f"stage.back_projection_operator must be one of {', '.join(BACK_PROJECTION_OPERATORS)}, "
                          f"got {self.back_projection_operator!r}")
        if self.adversarial_warmup < 0:
            errors.append(f"stage.adversarial_warmup must be >= 0 generator steps, got {self.adversarial_warmup}")
        return errors

    def input_files(self) -> dict[str, str]:
        return {"pretrained_path": self.pretrained_path} if self.pretrained_path else {}

    def codeformer_errors(self) -> list[str]:
        errors = [f"stage.layout=codeformer: {e}; set stage.codeformer_size, channel_multipliers or "
                  f"transformer_width/heads" for e in codeformer_sizes(self).errors()]
        if self.phase != "render":
            errors.append(f"stage.layout=codeformer trains the render phase only (from stage.pretrained_path="
                          f"codeformer.pth or an exported codeformer-layout codebook file), got stage.phase="
                          f"{self.phase}; set stage.phase=render")
        for name in ("temporal", "detail_gate", "residual_head"):
            if getattr(self, name):
                errors.append(f"stage.{name} is a compact-layout option; the codeformer layout is CodeFormer's "
                              f"network: set stage.{name}=false")
        return errors

    def token_grid(self, hr_resolution: int, lr_resolution: int) -> int:
        """The token grid size, or a ValueError when the two encoders' grids differ."""
        hr_grid = hr_resolution // 2 ** (len(self.channel_multipliers) - 1)
        lr_grid = lr_resolution // 2 ** (len(self.lr_channel_multipliers) - 1)
        if hr_resolution <= 0 or hr_grid != lr_grid or hr_grid == 0:
            raise ValueError(
                f"codebook stage: data.hr_resolution={hr_resolution} with {len(self.channel_multipliers)} "
                f"channel_multipliers gives a {hr_grid} x {hr_grid} grid, data.resolution={lr_resolution} with "
                f"{len(self.lr_channel_multipliers)} lr_channel_multipliers gives {lr_grid} x {lr_grid}; they must "
                f"match (e.g. 64 -> 256 with 3 and 5 levels, 256 -> 512 with 5 and 6)")
        return hr_grid


def codeformer_sizes(cfg: CodebookConfig) -> CodeFormerSizes:
    """The codeformer layout's network sizes from the stage config: attention on the token grid and fusion at every
    level between the grid and the image, as the release (512 px, 16 x 16 grid, fusion at 32 .. 256)."""
    sizes = [cfg.codeformer_size // 2 ** i for i in range(len(cfg.channel_multipliers))]
    return CodeFormerSizes(image_size=cfg.codeformer_size, base_channels=cfg.base_channels,
                           channel_multipliers=tuple(cfg.channel_multipliers), blocks_per_level=cfg.blocks_per_level,
                           attention_resolutions=(sizes[-1],), codebook_size=cfg.codebook_size, code_dim=cfg.code_dim,
                           width=cfg.transformer_width, heads=cfg.transformer_heads, layers=cfg.transformer_layers,
                           ff=2 * cfg.transformer_width, fuse_resolutions=tuple(sorted(sizes[1:-1])))


def check_codeformer_sizes(theirs: CodeFormerSizes, ours: CodeFormerSizes, path: str) -> None:
    """A CodeFormerWeightsError naming every size in which the weights file at ``path`` differs from the config."""
    differ = [f"{k} {getattr(theirs, k)} in the file, {getattr(ours, k)} here" for k in vars(ours)
              if getattr(theirs, k) != getattr(ours, k)]
    if differ:
        raise CodeFormerWeightsError(
            f"stage.pretrained_path={path}: {'; '.join(differ)}. The codeformer layout takes its sizes from "
            f"stage.codeformer_size, base_channels, channel_multipliers, blocks_per_level, codebook_size, "
            f"code_dim and transformer_width / layers / heads; the release's are the schema defaults "
            f"(configs/stage/codebook.yaml without an experiment's size overrides)")


def degrade_frames(frames: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Low-res frames [N, 3, r, r] made to look generated: per frame a random blur, a 2x down-up resize and noise,
    each scaled by ``strength`` (0 returns the frames unchanged).

    The training range, at strength s (0.5 by default), all at the low resolution: a 3 x 3 box blur blended in
    with weight U(0, s) (variance at most 2 s / 3: sigma <= 0.58 low-res px at s = 0.5); with probability s / 2 a
    2x bilinear down-up (antialiased down); Gaussian noise of std U(0, 0.05 s) in [-1, 1] units (at most 6.4 s grey
    levels); no JPEG, no motion blur, no resize below half the low resolution. :mod:`evaluation.degraded` goes
    beyond it."""
    if strength <= 0:
        return frames
    n, device = frames.shape[0], frames.device
    draw = lambda: upload(torch.rand(n, 1, 1, 1, generator=generator), device)  # noqa: E731
    blurred = F.avg_pool2d(frames, 3, stride=1, padding=1, count_include_pad=False)
    out = torch.lerp(frames, blurred, strength * draw())
    size = frames.shape[-1]
    resized = F.interpolate(F.interpolate(out, scale_factor=0.5, mode="bilinear", antialias=True), size=size,
                            mode="bilinear")
    out = torch.where(draw() < 0.5 * strength, resized, out)
    noise = upload(torch.randn(frames.shape, generator=generator), device)
    return (out + 0.05 * strength * draw() * noise).clamp(-1, 1)


def downsample(images: torch.Tensor, size: int | tuple[int, int], operator: str) -> torch.Tensor:
    """The back-projection's down operator: ``area`` (the average the corpus makes its low-res frames with) or
    ``bicubic`` (antialiased: the bicubic kernel widened by the factor)."""
    if operator == "area":
        return F.interpolate(images, size=size, mode="area")
    if operator == "bicubic":
        return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    raise ValueError(f"back-projection operator must be one of {', '.join(BACK_PROJECTION_OPERATORS)}, got "
                     f"{operator!r}")


def back_project(output: torch.Tensor, low: torch.Tensor, fidelity: float | torch.Tensor,
                 operator: str = "bicubic") -> torch.Tensor:
    """High-res output [N, 3, H, H] + the low-res input [N, 3, r, r] -> output + w * up(low - down(output)).

    down is :func:`downsample` with ``operator`` (``area`` is the corpus's own downsampler, so on its exact
    downsamples it is an oracle), up is bicubic: one back-projection step, which moves the output's downsampled
    image towards the input by the fraction w (number or [N])."""
    residual = low - downsample(output, low.shape[-2:], operator)
    correction = F.interpolate(residual, size=output.shape[-2:], mode="bicubic", align_corners=False)
    return output + fidelity_like(fidelity, output) * correction


def earlier_phase_file(stages_dir: str | Path, phase: str) -> StageFile:
    """The exported codebook file a phase starts from, or a StageFileError naming the file and the command."""
    previous = PHASES[PHASES.index(phase) - 1]
    path = Path(stages_dir or ".") / "codebook.safetensors"
    command = (f"seespeaker train experiment=<same> stage=codebook stage.phase={previous} run.name={previous}")
    if not path.is_file():
        raise StageFileError(f"stage.phase={phase} starts from the exported {previous!r} phase, but {path} does not "
                             f"exist; train that phase first: `{command}`")
    stage = load_stage_file(path, expect_stage="codebook")
    if stage.phase not in PHASES or PHASES.index(stage.phase) < PHASES.index(previous):
        raise StageFileError(f"{path} holds codebook phase {stage.phase!r}; phase {phase!r} needs {previous!r} or "
                             f"later: `{command}`")
    return stage


def check_shapes(stage: StageFile, own: dict[str, torch.Tensor], fresh: tuple[str, ...] = ("discriminator",)) -> None:
    """A file trained with other network sizes, or without a tensor this config builds outside the children
    ``fresh`` names (those that start untrained), is an error naming the tensor."""
    missing = [key for key in own if key not in stage.state and key.split(".")[0] not in fresh]
    if missing:
        raise StageFileError(
            f"{stage.path} has no tensor {missing[0]} (and {len(missing) - 1} more) that this config builds; it was "
            f"trained with other network settings (e.g. stage.shortcut): use the file's settings or retrain the "
            f"codebook from its vqgan phase")
    for key, value in stage.state.items():
        if key in own and own[key].shape != value.shape:
            raise StageFileError(
                f"{stage.path}: tensor {key} is {tuple(value.shape)} in the file but {tuple(own[key].shape)} in "
                f"this config; every codebook phase must use the same network settings as the file's")
