"""Stage 2c: the discrete codebook and the rendering network (CodeFormer's recipe), in three phases.

- ``vqgan``: a VQ autoencoder on the high-resolution faces (``hr_frames``): L1 + codebook/commitment (beta)
  + optional perceptual + optional hinge GAN (:mod:`lightning_modules.codebook_losses`); code usage and
  perplexity are logged and dead codes are re-initialised from encoder outputs every ``reinit_every`` steps.
- ``transformer``: a low-resolution encoder and the code transformer predict the high-resolution frame's code
  indices from the (degraded) low-resolution frame: cross-entropy + latent L2 to the quantized latent.
- ``render``: the fusion layers feed the low-resolution encoder's features into the decoder (frozen unless
  ``render_trains`` names it) under a fidelity weight w (drawn per sample in [0, 1] in training): L1 + optional
  perceptual + optional GAN. The inputs are degraded real frames (``degrade``); ``render_source: autoencoder``
  first passes them through the exported autoencoder, ``render_source: motion`` replaces them with the exported
  motion stage's rendering of each frame (:func:`rerender_frames`). With ``consistency`` the decoded image is
  back-projected onto the input by the fraction w (:func:`back_project`, down operator
  ``back_projection_operator``): at w = 1 its low frequencies come from the input, its detail from the decoder.
  ``detail_gate`` adds a learned gate that first pulls the decoded image towards bicubic upsampling of the input
  (:class:`DetailGate`), trained with the render phase.
  ``residual_head`` instead makes the output at fidelity w ``(1 - w) * decoded + w * (bicubic + detail)``, the
  detail from a zero-initialised head on the decoder's last features (:class:`ResidualHead`): the render phase
  starts from bicubic at w = 1 and learns only what improves on it.

Every phase builds all networks; a later phase starts from the exported file of the phase before it
(``<stages_dir>/codebook.safetensors``) and trains only its own part. The export records the phase.

``layout: codeformer`` replaces all of them by CodeFormer's own network (:class:`CodeFormerNet`, one child
``codeformer``): the low-res frame bicubic-upsampled to ``codeformer_size``, no detail gate, no back-projection.
It trains the render phase only (``render_trains`` names its fusion blocks, generator or encoder), starting from
``pretrained_path`` (CodeFormer's released ``codeformer.pth``, loaded unchanged) or a codeformer-layout file.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from common.errors import CheckpointError
from common.images import image_grid
from lightning_modules.autoencoder import AutoencoderStage
from lightning_modules.base import Media, StageModule, masked_mean, valid_count
from lightning_modules.codebook_losses import image_losses
from lightning_modules.codebook_parts import (
    PHASES,
    CodebookConfig,
    FacePerceptual,
    back_project,
    check_codeformer_sizes,
    check_shapes,
    codeformer_sizes,
    degrade_frames,
    earlier_phase_file,
)
from lightning_modules.motion_rerender import MotionRerender
from lightning_modules.nets.code_transformer import CodeTransformer
from lightning_modules.nets.codeformer import (
    CodeFormerNet,
    CodeFormerSizes,
    load_weights_into,
    read_codeformer_weights,
)
from lightning_modules.nets.renderer import DetailGate, FidelityFusion, ResidualHead
from lightning_modules.nets.vq import PatchDiscriminator, VectorQuantizer
from lightning_modules.nets.vq_shortcut import vq_networks
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles

TRAINS = {"vqgan": ("encoder", "quantizer", "decoder"), "transformer": ("lr_encoder", "transformer"),
          "render": ("fusion",)}
RENDER_HEADS = ("detail_gate", "residual_head")  # built by options, trained with the render phase
CODEFORMER_PARTS = {"fusion": "fuse_convs_dict", "decoder": "generator", "lr_encoder": "encoder"}  # render_trains
REINIT_CANDIDATES = 1024  # encoder output vectors kept per step for dead-code re-initialisation


class CodebookStage(StageModule):
    config_class = CodebookConfig

    def __init__(self, cfg: CodebookConfig, data, stages_dir: str = "", max_steps: int = 1000,
                 load_earlier: bool = True):
        super().__init__(cfg, data, stages_dir, max_steps)
        cfg.hr_resolution, cfg.lr_resolution = data.hr_resolution, data.resolution
        if cfg.layout == "codeformer":
            self.codeformer = CodeFormerNet(codeformer_sizes(cfg))
            self.detail_gate = self.residual_head = None
        else:
            self.build_compact(cfg, data)
        gan = cfg.adversarial and cfg.phase != "transformer"
        self.discriminator = PatchDiscriminator(list(cfg.discriminator_channels)) if gan else None
        self.num_optimizers = 2 if gan else 1
        self.automatic_optimization = not gan
        self.loss_weights = {"l1": cfg.l1_weight, "codebook": cfg.codebook_weight, "commitment": cfg.codebook_weight,
                             "perceptual": cfg.perceptual_weight, "adversarial": cfg.adversarial_weight,
                             "ce": cfg.ce_weight, "latent": cfg.latent_weight}
        self._perceptual: FacePerceptual | None = None
        self._autoencoder: list | None = None
        self.motion_rerender = MotionRerender("stage.render_source=motion")
        self._candidates: torch.Tensor | None = None
        if load_earlier and cfg.pretrained_path:
            self.load_pretrained(cfg.pretrained_path)
        elif load_earlier and cfg.phase != "vqgan":
            self.load_phase_file(earlier_phase_file(stages_dir, cfg.phase), fresh=self.trained_parts(cfg.phase))
        self.set_phase(cfg.phase)

    def build_compact(self, cfg: CodebookConfig, data) -> None:
        """The compact layout's networks: VQ autoencoder, low-res encoder, code transformer, fusion, detail gate."""
        grid = cfg.token_grid(data.hr_resolution, data.resolution)
        if cfg.temporal and data.clip_frames > cfg.window_frames:
            raise ValueError(f"data.clip_frames={data.clip_frames} exceeds stage.window_frames={cfg.window_frames} "
                             f"of the temporal transformer; raise window_frames or shorten the clips")
        encoder, decoder = vq_networks(cfg.shortcut)
        levels, blocks = list(cfg.channel_multipliers), cfg.blocks_per_level
        self.encoder = encoder(cfg.base_channels, levels, blocks, cfg.code_dim)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.beta, cfg.usage_decay)
        self.decoder = decoder(cfg.base_channels, levels, blocks, cfg.code_dim)
        self.lr_encoder = encoder(cfg.lr_base_channels, list(cfg.lr_channel_multipliers), blocks, cfg.code_dim)
        self.transformer = CodeTransformer(cfg.code_dim, cfg.codebook_size, grid * grid, cfg.transformer_width,
                                           cfg.transformer_layers, cfg.transformer_heads, cfg.temporal,
                                           max_frames=cfg.window_frames)
        lr_widths = {data.resolution // 2 ** i: w for i, w in enumerate(self.lr_encoder.widths)}
        self.fusion = FidelityFusion(lr_widths, self.decoder.level_widths(grid))
        self.detail_gate = DetailGate() if cfg.detail_gate else None
        self.residual_head = ResidualHead(self.decoder.widths[-1]) if cfg.residual_head else None

    @classmethod
    def requires(cls, cfg: CodebookConfig) -> tuple[str, ...]:
        needs = {"autoencoder": ("autoencoder",), "motion": ("conre", "autoencoder", "motion_diffusion")}
        conre = cfg.perceptual_weight > 0 and cfg.perceptual_network == "conre"
        stages = needs.get(cfg.render_source, ()) + (("conre",) if conre else ())
        return tuple(dict.fromkeys(stages))

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> CodebookStage:
        """The renderer for generation, in eval mode; the file must hold the transformer or render phase."""
        from datamodules.config import DataConfig
        stage = files["codebook"]
        if stage.phase not in PHASES[1:]:
            raise StageFileError(
                f"{stage.path} holds codebook phase {stage.phase!r}; generation needs the transformer or render "
                f"phase: `seespeaker train experiment=<same> stage=codebook stage.phase=transformer "
                f"run.name=transformer`")
        cfg = stage.typed_config(CodebookConfig)
        cfg.phase = stage.phase
        data = DataConfig(resolution=cfg.lr_resolution, hr_resolution=cfg.hr_resolution,
                          clip_frames=min(cfg.window_frames, 1 if not cfg.temporal else cfg.window_frames))
        module = cls(cfg, data, load_earlier=False)
        module.load_phase_file(stage, use_ema)
        return module.eval()

    # ---- phases ---------------------------------------------------------------------------------------
    def trained_parts(self, phase: str) -> tuple[str, ...]:
        """The children a phase trains (the discriminator besides them)."""
        return tuple(self.cfg.render_trains) + RENDER_HEADS if phase == "render" else TRAINS[phase]

    def set_phase(self, phase: str) -> None:
        """Freeze everything but the networks this phase trains (and the discriminator)."""
        trained = self.trained_parts(phase) + ("discriminator",)
        for name, child in self.named_children():
            child.requires_grad_(name in trained)
        if self.cfg.layout == "codeformer":
            for name in self.cfg.render_trains:
                getattr(self.codeformer, CODEFORMER_PARTS[name]).requires_grad_(True)
        self.cfg.phase = phase

    def export_phase(self) -> str:
        return self.cfg.phase

    def load_phase_file(self, stage: StageFile, use_ema: bool = True, fresh: tuple[str, ...] = ()) -> None:
        """The file's weights; every tensor must be in it but those of the children ``fresh`` names (the ones the
        phase being started trains) and the discriminator's."""
        layout = stage.config.get("layout", "compact")
        if layout != self.cfg.layout:
            raise StageFileError(f"{stage.path} holds a codebook stage of layout {layout!r}, this config builds "
                                 f"stage.layout={self.cfg.layout}; set stage.layout={layout} or give a "
                                 f"{self.cfg.layout}-layout file")
        weights = stage.weights(use_ema)
        check_shapes(stage, self.state_dict(), fresh + ("discriminator",))
        self.load_state_dict(weights, strict=False)
        print(f"[codebook] phase {self.cfg.phase} starts from {stage.path} (phase {stage.phase})")

    def load_pretrained(self, path: str) -> None:
        """CodeFormer's released weights (``{'params_ema': state_dict}``) into the codeformer layout, unchanged."""
        if self.cfg.layout != "codeformer":
            raise ValueError(f"stage.pretrained_path={path} holds CodeFormer's weights, which only the codeformer "
                             f"layout has: set stage.layout=codeformer or drop stage.pretrained_path")
        state = read_codeformer_weights(path)
        check_codeformer_sizes(CodeFormerSizes.from_state_dict(state, self.cfg.transformer_heads, path),
                               self.codeformer.sizes, path)
        load_weights_into(self.codeformer, state, path)
        print(f"[codebook] the codeformer layout starts from {path}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The stage config always travels with the checkpoint: generation rebuilds the networks from it."""
        super().on_save_checkpoint(checkpoint)
        if not checkpoint["seespeaker"]["config"]:
            checkpoint["seespeaker"]["config"] = {"stage": asdict(self.cfg)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        phase = (checkpoint.get("seespeaker") or {}).get("phase")
        if phase and phase != self.cfg.phase:
            raise CheckpointError(
                f"the checkpoint being resumed was written by codebook phase {phase!r}, this run trains phase "
                f"{self.cfg.phase!r}; give each phase its own run folder (run.name={self.cfg.phase}) or resume=false")

    # ---- the networks end to end ------------------------------------------------------------------------
    def predict_codes(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """lr [B, T, 3, r, r] -> (logits [B, T, N, K], low-res latent [B*T, D, g, g], encoder features)."""
        z, features = self.lr_encoder(lr.flatten(0, 1), with_features=True)
        return self.transformer(z.unflatten(0, lr.shape[:2])), z, features

    def render(self, lr: torch.Tensor, fidelity: float | torch.Tensor,
               detail_scale: float | None = None) -> torch.Tensor:
        """lr [B, T, 3, r, r] in [-1, 1] -> high-res frames [B*T, 3, H, H] at fidelity w (number or [B*T]); the
        residual head's detail at ``detail_scale`` (None: 1 in training, ``stage.detail_scale`` in eval mode)."""
        if self.cfg.layout == "codeformer":
            return self.codeformer_render(lr.flatten(0, 1), fidelity)
        logits, z, features = self.predict_codes(lr)
        indices = logits.argmax(-1).view(z.shape[0], z.shape[-2], z.shape[-1])
        low = lr.flatten(0, 1)
        if detail_scale is None:
            detail_scale = 1.0 if self.training else self.cfg.detail_scale
        output = self.decode(self.quantizer.lookup(indices), z, features, low, fidelity, detail_scale)
        if self.detail_gate is not None:
            output = self.detail_gate(output, low, fidelity)
        if not self.cfg.consistency:
            return output
        return back_project(output, low, fidelity, self.cfg.back_projection_operator)

    def decode(self, codes: torch.Tensor, z: torch.Tensor, features: dict[int, torch.Tensor], low: torch.Tensor,
               fidelity: float | torch.Tensor, detail_scale: float = 1.0) -> torch.Tensor:
        """The decoder on looked-up codes with the low-res encoder's features fused at fidelity w; its linear
        shortcut on the blend of codes and latent z; with the residual head, detail (times ``detail_scale``) on
        bicubic at weight w."""
        fuse = self.fusion.hook(features, fidelity)
        if not self.cfg.shortcut:
            return self.decoder(codes, fuse=fuse)
        blend = self.fusion.blend(codes, z, fidelity)
        if self.residual_head is None:
            return self.decoder(codes, fuse=fuse, shortcut_latent=blend)
        output, hidden = self.decoder(codes, fuse=fuse, shortcut_latent=blend, with_hidden=True)
        return self.residual_head(output, hidden, low, fidelity, detail_scale)

    def codeformer_render(self, low: torch.Tensor, fidelity: float | torch.Tensor) -> torch.Tensor:
        """The codeformer layout: low-res frames [N, 3, r, r] bicubic-upsampled to ``codeformer_size``, CodeFormer,
        the output resized to the high resolution (when it differs)."""
        size = self.cfg.codeformer_size
        x = F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
        output = self.codeformer(x, fidelity=fidelity, adain=self.cfg.adain).image
        if output.shape[-1] != self.cfg.hr_resolution:
            output = F.interpolate(output, size=self.cfg.hr_resolution, mode="bicubic", align_corners=False,
                                   antialias=self.cfg.hr_resolution < size)
        return output

    @torch.no_grad()
    def upscale(self, frames: torch.Tensor, fidelity: float | None = None, batch_frames: int = 16,
                detail_scale: float | None = None) -> torch.Tensor:
        """A video's frames [T, 3, r, r] -> [T, 3, H, H]: windows of ``window_frames`` (temporal variant) or
        batches of independent frames. w falls back to 0 while the renderer is untrained (phase transformer);
        ``detail_scale`` None is the stage's own."""
        w = self.cfg.fidelity_weight if fidelity is None else fidelity
        if self.cfg.phase != "render":
            w = 0.0
        step = self.cfg.window_frames if self.cfg.temporal else batch_frames
        out = []
        for chunk in frames.split(step):
            lr = chunk[None] if self.cfg.temporal else chunk[:, None]
            out.append(self.render(lr, w, detail_scale).clamp(-1, 1))
        return torch.cat(out)

    # ---- losses ---------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "hr_frames" not in batch:
            raise ValueError("the codebook stage needs high-resolution targets: set data.hr_resolution "
                             "(e.g. 256 for 64 px frames)")
        return getattr(self, f"{self.cfg.phase}_losses")(batch)

    def vqgan_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        hr = batch["hr_frames"]
        target = hr.flatten(0, 1)
        z = self.encoder(target)
        quantized = self.quantizer(z)
        output = self.decoder(quantized.latents)
        self._candidates = self._sample_rows(z.detach())
        self._log_usage(quantized.perplexity, len(hr))
        losses = {"codebook": quantized.codebook_loss, "commitment": quantized.commitment_loss}
        losses.update(self.image_losses(output, target))
        return {k: per_clip(v, len(hr)) for k, v in losses.items()}

    def transformer_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        hr, lr = batch["hr_frames"], self.degraded(batch["frames"])
        with torch.no_grad():
            target = self.quantizer(self.encoder(hr.flatten(0, 1)), track_usage=False)
        logits, z, _ = self.predict_codes(lr)
        indices = target.indices.flatten(1)
        ce = F.cross_entropy(logits.flatten(0, 2), indices.flatten(), reduction="none").view(len(indices), -1).mean(1)
        latent = (z - target.latents.detach()).square().mean(dim=(1, 2, 3))
        accuracy = per_clip((logits.flatten(0, 1).argmax(-1) == indices).float().mean(1), len(hr))
        if self.training:
            self.log("train/code_accuracy", accuracy.mean(), batch_size=len(hr))
        else:  # over the valid samples of every rank, as val/loss
            self.log("val/code_accuracy", masked_mean(accuracy, batch.get("valid")), sync_dist=True,
                     batch_size=valid_count(batch))
        return {"ce": per_clip(ce, len(hr)), "latent": per_clip(latent, len(hr))}

    def render_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        hr, lr = batch["hr_frames"], self.render_inputs(batch)
        target = hr.flatten(0, 1)
        w = torch.rand(len(target), device=target.device) if self.training else self.cfg.fidelity_weight
        output = self.render(lr, w)
        return {k: per_clip(v, len(hr)) for k, v in self.image_losses(output, target).items()}

    def image_losses(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image L1, perceptual (weight > 0) and the generator's hinge term (GAN on), whose weight follows its
        warm-up over generator steps (:func:`lightning_modules.codebook_losses.image_losses`)."""
        self._last = (output, target)
        losses, self.loss_weights["adversarial"] = image_losses(output, target, self.cfg, self.discriminator,
                                                                self.perceptual, self.generator_step)
        return losses

    @property
    def generator_step(self) -> int:
        """Generator steps so far: with the GAN on, Lightning's global step counts both optimizers' steps."""
        return self.global_step // self.num_optimizers

    def render_inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        """The render phase's low-res inputs [B, T, 3, r, r]: the batch's frames, degraded; first through the
        autoencoder's round trip (``render_source: autoencoder``: the frames stage 2 makes are decoded from its
        latents) or re-rendered by the motion stage (``render_source: motion``)."""
        frames = batch["frames"]
        if self.cfg.render_source == "autoencoder":
            frames = self.autoencoder_round_trip(frames)
        elif self.cfg.render_source == "motion":
            frames = self.motion_rerender(self.earlier, batch, self.data_cfg.resolution, self.training)
        return self.degraded(frames)

    @torch.no_grad()
    def autoencoder_round_trip(self, frames: torch.Tensor) -> torch.Tensor:
        if self._autoencoder is None:
            vae = AutoencoderStage.for_inference(self.earlier).vae
            self._autoencoder = [vae.eval().requires_grad_(False)]  # a list: outside the module tree and checkpoints
        vae = self._autoencoder[0].to(frames.device)
        flat = frames.flatten(0, 1)
        return vae.decode(vae.encode(flat).latent_dist.mode()).sample.clamp(-1, 1).view_as(frames)

    def degraded(self, frames: torch.Tensor) -> torch.Tensor:
        generator = None if self.training else torch.Generator().manual_seed(0)
        return degrade_frames(frames.flatten(0, 1), self.cfg.degrade, generator).view_as(frames)

    def perceptual(self) -> FacePerceptual:
        if self._perceptual is None:
            self._perceptual = FacePerceptual.from_stages(self.earlier, self.data_cfg.resolution)
        return self._perceptual

    # ---- codebook health --------------------------------------------------------------------------------
    def _sample_rows(self, z: torch.Tensor) -> torch.Tensor:
        rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return rows[torch.randperm(len(rows), device=rows.device)[:REINIT_CANDIDATES]]

    def _log_usage(self, perplexity: torch.Tensor, batch_size: int) -> None:
        split = "train" if self.training else "val"
        used = (~self.quantizer.dead_codes(self.cfg.dead_threshold)).float().mean()
        self.log(f"{split}/perplexity", perplexity, batch_size=batch_size)
        self.log(f"{split}/codes_used", used, batch_size=batch_size)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.cfg.reinit_every
        if self.cfg.phase != "vqgan" or not every or (self.global_step % every) or self._candidates is None:
            return
        candidates, usage = self._candidates, self.quantizer.usage
        if self.trainer.world_size > 1:  # every rank takes the same decision with the same rows
            candidates = self.all_gather(candidates).flatten(0, 1)
            self.quantizer.usage.copy_(self.trainer.strategy.reduce(usage.clone(), reduce_op="mean"))
        generator = torch.Generator().manual_seed(self.global_step)
        dead = self.quantizer.reinit_dead(candidates, self.cfg.dead_threshold, generator)
        if self.ema is not None and "quantizer.embedding.weight" in self.ema.shadow and len(dead):
            shadow = self.ema.shadow["quantizer.embedding.weight"]
            shadow[dead.to(shadow.device)] = self.quantizer.embedding.weight.detach()[dead].to(shadow)
        self.log("train/dead_codes_reset", float(len(dead)), batch_size=1)

    # ---- adversarial option: two optimizers, manual optimisation ------------------------------------------
    def adversarial_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        output, target = self._last
        return target, output

    def adversarial_clip(self) -> float | None:
        return self.cfg.adversarial_grad_clip or None

    def configure_optimizers(self):
        if self.discriminator is None:
            return super().configure_optimizers()
        return self.adversarial_optimizers(self.trainable_parameters())

    # ---- media ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """First frames of the batch: the low-res frame the phase sees (upsampled) | its output | high-res target."""
        hr = batch["hr_frames"][:4, :1]
        inputs = batch["frames"][:4, :1]
        with self.ema_scope():
            if self.cfg.phase == "vqgan":
                output = self.decoder(self.quantizer(self.encoder(hr.flatten(0, 1)), track_usage=False).latents)
            elif self.cfg.phase == "render":
                first_four = {k: v[:4] for k, v in batch.items() if k in ("frames", "landmarks", "audio")}
                inputs = self.render_inputs(first_four)[:, :1]
                output = self.render(inputs, self.cfg.fidelity_weight)
            else:
                inputs = self.degraded(inputs)
                output = self.render(inputs, 0.0)
        size = hr.shape[-1]
        up = F.interpolate(inputs.flatten(0, 1), size=size, mode="nearest")
        image = image_grid([up, output.clamp(-1, 1), hr.flatten(0, 1)])
        return {self.cfg.phase: Media(image=image, caption="low-res | output | high-res")}


def per_clip(values: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-frame values [B*T] -> per-sample means [B]."""
    return values.view(batch_size, -1).mean(1)
