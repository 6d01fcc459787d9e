"""Train a tiny stage with DDP or DeepSpeed on CPU processes (or GPUs); launched by the distributed tests.

``python ds_train_script.py --strategy deepspeed --zero 3 --devices 2 --out DIR`` trains a small
regression stage (per-sample losses, the StageModule base) on random tensors and writes to DIR:
``train.json`` (rank 0's training loss and learning rate per batch, the optimizer class),
``checkpoint/`` (Trainer.save_checkpoint: a DeepSpeed directory, or ``checkpoint.ckpt`` under DDP),
``weights.pt`` (the module's own trained weights, gathered under ZeRO-3) and ``deepspeed_config.json``.
Lightning's ddp launcher re-runs this script once per extra rank.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from common.errors import UserError  # noqa: E402
from datamodules.config import DataConfig  # noqa: E402
from lightning_modules.base import StageConfig, StageModule  # noqa: E402
from trainer.schemas import TrainerConfig  # noqa: E402
from trainer.strategies import build_strategy, deepspeed_config  # noqa: E402

FEATURES = 16


@dataclass
class RegressionConfig(StageConfig):
    """A two-layer regression stage."""

    hidden: int = field(default=32, metadata={"help": "hidden width"})


class RandomRegression(Dataset):
    """Random inputs and their image under a fixed random linear map plus a bias."""

    def __init__(self, size: int = 512):
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.randn(size, FEATURES, generator=gen)
        self.y = self.x @ torch.randn(FEATURES, 4, generator=gen) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"key": f"sample-{i}", "x": self.x[i], "y": self.y[i]}


class RegressionStage(StageModule):
    """Per-sample squared error of a two-layer network."""

    config_class = RegressionConfig

    def __init__(self, cfg, data, max_steps, num_optimizers=1):
        super().__init__(cfg, data, max_steps=max_steps)
        self.num_optimizers = num_optimizers
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, cfg.hidden), torch.nn.Tanh(), torch.nn.Linear(cfg.hidden, 4)
        )
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def compute_losses(self, batch):
        return {"mse": (self.net(batch["x"]) - batch["y"]).pow(2).mean(dim=1)}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"].detach()))
        self.lrs.append(float(self.trainer.optimizers[0].param_groups[0]["lr"]))

    def train_dataloader(self):
        return DataLoader(RandomRegression(), batch_size=self.data_cfg.batch_size, shuffle=True)


class StopAt(pl.Callback):
    """Stop training after a given optimizer step, as a preempted job does."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def module_weights(trainer: pl.Trainer, module: RegressionStage) -> dict[str, torch.Tensor]:
    """The module's full fp32 weights (gathered from all ranks under ZeRO-3; a collective there)."""
    params = list(module.parameters())
    if getattr(trainer.strategy, "zero_stage_3", False):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="deepspeed", choices=("ddp", "deepspeed"))
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--optimizers", type=int, default=1)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--offload", action="store_true", help="ZeRO offload of optimizer states (and parameters)")
    parser.add_argument("--cpu-adam", action="store_true", help="offloaded states on DeepSpeedCPUAdam on CPU too")
    parser.add_argument("--stop-at", type=int, default=0, help="stop after this many steps (of --steps)")
    parser.add_argument("--resume", default="", help="checkpoint to resume from")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = TrainerConfig(
        accelerator=args.accelerator, strategy=args.strategy, devices=args.devices, max_steps=args.steps,
        precision=args.precision,
        deepspeed_stage=args.zero, deepspeed_offload=args.offload, ema_decay=0.0, gradient_clip_val=1.0,
        accumulate_grad_batches=args.accumulate, process_timeout_s=60,
    )
    data = DataConfig()
    data.batch_size = 8
    pl.seed_everything(0, verbose=False)
    stage = RegressionStage(RegressionConfig(name="regression", lr=3e-2, weight_decay=0.01, warmup_steps=5), data,
                            args.steps, num_optimizers=args.optimizers)
    try:
        strategy, extra = build_strategy(tcfg, stage)
    except UserError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    if args.cpu_adam:
        strategy.cpu_adam = True
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=args.devices, strategy=strategy, max_steps=args.steps,
        gradient_clip_val=tcfg.gradient_clip_val, accumulate_grad_batches=tcfg.accumulate_grad_batches,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[StopAt(args.stop_at)] if args.stop_at else [], **extra,
    )
    trainer.fit(stage, ckpt_path=args.resume or None, weights_only=True)
    ckpt = out / ("checkpoint" if args.strategy == "deepspeed" else "checkpoint.ckpt")
    trainer.save_checkpoint(ckpt, weights_only=False)
    weights = module_weights(trainer, stage)
    if trainer.is_global_zero:
        torch.save(weights, out / "weights.pt")
        optimizer = trainer.optimizers[0]
        base = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO optimizer wraps the stage's
        record = {"losses": stage.losses, "lrs": stage.lrs, "optimizer": type(base).__name__,
                  "global_step": trainer.global_step}
        (out / "train.json").write_text(json.dumps(record))
        if args.strategy == "deepspeed":
            (out / "deepspeed_config.json").write_text(json.dumps(deepspeed_config(tcfg, data.batch_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
