"""The distributed strategy of a run, built from ``trainer.*``: single process, DDP or DeepSpeed ZeRO.

``build_strategy(trainer_cfg, stage_module)`` returns the Lightning strategy and the Trainer keyword
arguments it decides (precision), after refusing the combinations that cannot train correctly.
The DeepSpeed config is generated from the trainer config by ``deepspeed_config`` (the one source of
truth for micro batch, accumulation, clipping, precision, ZeRO stage and offload) and printed at start.

DeepSpeed on CPU: Lightning's ``DeepSpeedStrategy`` accepts only CUDA devices. ``CPUCapableDeepSpeedStrategy``
keeps Lightning's behaviour on GPUs and, on CPU, sets up the process group as DDP does (gloo) and hands
DeepSpeed the local rank as its device rank, so that ZeRO-2 and ZeRO-3 train for real in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.precision import DeepSpeedPrecision
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from common.errors import UserError
from trainer.schemas import TrainerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGE3_PREFETCH_BUCKET = 50_000_000  # elements of parameters fetched ahead of use (ZeRO-3)
STAGE3_PERSISTENCE_THRESHOLD = 100_000  # parameters smaller than this stay unpartitioned (ZeRO-3)


def uses_gpu(trainer_cfg: TrainerConfig) -> bool:
    """True when the run trains on CUDA devices (``accelerator=gpu``, or ``auto`` with CUDA present)."""
    if trainer_cfg.accelerator == "gpu":
        return True
    return trainer_cfg.accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(trainer_cfg: TrainerConfig) -> str:
    """The Lightning precision to train with: the configured one on GPU, ``32-true`` on CPU."""
    if uses_gpu(trainer_cfg) or trainer_cfg.precision == "32-true":
        return trainer_cfg.precision
    rank_zero_warn(f"trainer.precision={trainer_cfg.precision} is for GPUs; training on CPU in 32-true")
    return "32-true"


def configure_torch_extensions_dir() -> str:
    """Prepare DeepSpeed's JIT op builds: one shared compile cache and an arch list its builder can parse.

    The cache is env ``TORCH_EXTENSIONS_DIR``, else ``<repo>/.torch_extensions``. DeepSpeed's builder reads
    ``TORCH_CUDA_ARCH_LIST`` entries as integers, so arch-specific suffixes (``9.0a``) become ``9.0``.
    """
    path = os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".torch_extensions"))
    Path(path).mkdir(parents=True, exist_ok=True)
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    parseable = re.sub(r"(\d+\.\d+)[a-z]+", r"\1", arch_list)
    if parseable != arch_list:
        rank_zero_info(f"TORCH_CUDA_ARCH_LIST={arch_list!r} -> {parseable!r} for DeepSpeed's op builder")
        os.environ["TORCH_CUDA_ARCH_LIST"] = parseable
    return path


def deepspeed_config(trainer_cfg: TrainerConfig, data_batch_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config of a run, derived from the trainer config and the per-device batch size."""
    on_gpu = uses_gpu(trainer_cfg)
    stage = int(trainer_cfg.deepspeed_stage)
    bucket = int(trainer_cfg.deepspeed_bucket_size)
    world = trainer_cfg.devices * trainer_cfg.num_nodes
    zero: dict[str, Any] = {
        "stage": stage,
        # a second stream hides communication (and offload copies); one process without offload has none to hide,
        # and CPU processes have no streams to overlap on
        "overlap_comm": on_gpu and (world > 1 or trainer_cfg.deepspeed_offload),
        "contiguous_gradients": True,  # gradients copied into one buffer as they are reduced: no fragmentation
        "reduce_scatter": True,
        "reduce_bucket_size": bucket,
    }
    if stage < 3:
        zero.update(allgather_partitions=True, allgather_bucket_size=bucket)
    else:
        zero.update(
            stage3_prefetch_bucket_size=STAGE3_PREFETCH_BUCKET,
            stage3_param_persistence_threshold=STAGE3_PERSISTENCE_THRESHOLD,
            stage3_max_live_parameters=1_000_000_000,
            stage3_max_reuse_distance=1_000_000_000,
            sub_group_size=1_000_000_000,
            stage3_gather_16bit_weights_on_model_save=False,  # exports consolidate fp32 partitions instead
        )
    offload_extra = {}
    if trainer_cfg.deepspeed_offload:
        offload = {"device": "cpu", "pin_memory": on_gpu}
        zero["offload_optimizer"] = dict(offload)
        if stage == 3:
            zero["offload_param"] = dict(offload)
        if not on_gpu:  # CPU processes keep torch's AdamW (see CPUCapableDeepSpeedStrategy.cpu_adam)
            offload_extra["zero_force_ds_cpu_optimizer"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(data_batch_size),
        "gradient_accumulation_steps": int(trainer_cfg.accumulate_grad_batches),
        "gradient_clipping": float(trainer_cfg.gradient_clip_val or 0.0),
        "zero_optimization": zero,
        # the stage's own AdamW (torch); under offload on GPUs the strategy replaces it by DeepSpeedCPUAdam
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        **offload_extra,
    }
    # A non-finite loss or gradient skips the step: the ZeRO optimizer finds the non-finite gradient norm (with or
    # without clipping), skips the update and clears the gradients. fp32 gradients (32-true, bf16-mixed) are always
    # checked; bf16 gradients only with bf16.check_grad_overflow, set here rather than left to DeepSpeed's default.
    precision = resolve_precision(trainer_cfg)
    if precision == "bf16-mixed":  # fp32 weights, bf16 autocast in the forward: the same numerics as without DeepSpeed
        config["bf16"] = {"enabled": False}
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif precision == "bf16-true":
        config["bf16"] = {"enabled": True, "check_grad_overflow": True}
    return config


class AutocastDeepSpeedPrecision(DeepSpeedPrecision):
    """``bf16-mixed`` under DeepSpeed's ``torch_autocast``: the batch keeps its dtypes (Lightning's plugin would cast
    every float of it, the 16 kHz speech included, to bf16) and autocast chooses each operation's precision."""

    def __init__(self) -> None:
        super().__init__("bf16-mixed")

    def convert_input(self, data: Any) -> Any:
        return data


class CPUCapableDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy that also trains on CPU processes (gloo); on GPUs it is unchanged.

    ``cpu_adam``: run offloaded optimizer states on DeepSpeedCPUAdam (a JIT-compiled op); ``None`` chooses it
    on GPUs only, since on CPU processes the states already live in CPU memory and torch's AdamW needs no build.
    Every checkpoint directory it saves is marked complete once all ranks have written.
    """

    def __init__(self, *args: Any, cpu_adam: bool | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cpu_adam = cpu_adam

    @property
    def on_cpu(self) -> bool:
        """True when this process's device is the CPU."""
        return self.root_device.type == "cpu"

    def setup_environment(self) -> None:
        """On CPU set up the accelerator and process group as DDP does (the parent refuses non-CUDA devices)."""
        if not self.on_cpu:
            return super().setup_environment()
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        """On CPU skip the CUDA device-index check, then set the world ranks and initialise DeepSpeed's comm."""
        if not self.on_cpu:
            return super().setup_distributed()
        from lightning_fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        """``deepspeed.initialize`` with the local rank as device rank (a CPU device has no index)."""
        import deepspeed

        optimizer = self._offload_optimizer(optimizer, lr_scheduler)
        model_parameters = filter(lambda p: p.requires_grad, model.parameters())
        device_rank = self.local_rank if self.on_cpu else self.root_device.index
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=device_rank),
            config=self.config,
            model=model,
            model_parameters=model_parameters,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer

    def _offload_optimizer(self, optimizer, lr_scheduler):
        """Under optimizer offload replace torch Adam/AdamW by DeepSpeedCPUAdam (same groups and scheduler)."""
        offloaded = (self.config or {}).get("zero_optimization", {}).get("offload_optimizer")
        wanted = self.cpu_adam if self.cpu_adam is not None else not self.on_cpu
        if not (offloaded and wanted) or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            return optimizer
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        configure_torch_extensions_dir()
        defaults = optimizer.defaults
        cpu_adam = DeepSpeedCPUAdam(
            optimizer.param_groups, lr=defaults["lr"], betas=defaults["betas"], eps=defaults["eps"],
            weight_decay=defaults["weight_decay"], adamw_mode=isinstance(optimizer, torch.optim.AdamW),
        )
        if lr_scheduler is not None:
            lr_scheduler.optimizer = cpu_adam  # same param groups: the schedule goes on unchanged
            # torch notes that the scheduler's optimizer was not the one it was built with; here that is intended
            warnings.filterwarnings("ignore", message=r"Seems like `optimizer.step\(\)` has been overridden")
        return cpu_adam

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Any = None) -> None:
        """Every rank writes its partition; the directory is marked complete only after all have written."""
        from trainer.deepspeed_checkpoint import clear_complete, mark_complete

        filepath = self.broadcast(filepath)
        if self.is_global_zero:
            clear_complete(filepath)  # an overwritten directory is incomplete until the new save ends
        self.barrier("deepspeed_checkpoint_start")
        super().save_checkpoint(checkpoint, filepath, storage_options)
        mark_complete(filepath, barrier=self.barrier)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict[str, Any]:
        """Resume from a DeepSpeed directory reading its files weights-only (DeepSpeed itself unpickles freely)."""
        from trainer.deepspeed_checkpoint import weights_only_engine

        with weights_only_engine(self.deepspeed_engine):
            return super().load_checkpoint(checkpoint_path, weights_only)

    def _format_batch_size_and_grad_accum_config(self) -> None:
        """Accept the generated ``gradient_accumulation_steps`` when it agrees with the Trainer's."""
        assert isinstance(self.config, dict)
        steps = self.config.pop("gradient_accumulation_steps", None)
        super()._format_batch_size_and_grad_accum_config()
        if steps is not None and self.config["gradient_accumulation_steps"] != steps:
            raise UserError(
                f"DeepSpeed config accumulates {steps} micro-batches but the Trainer "
                f"{self.config['gradient_accumulation_steps']}; set trainer.accumulate_grad_batches only"
            )


def check_deepspeed_stage(trainer_cfg: TrainerConfig, stage_module) -> None:
    """Refuse stage settings that DeepSpeed cannot train correctly; note those that need care."""
    name = getattr(getattr(stage_module, "cfg", None), "name", "") or type(stage_module).__name__
    if getattr(stage_module, "num_optimizers", 1) > 1:
        raise UserError(
            f"stage {name!r} trains {stage_module.num_optimizers} optimizers, but trainer.strategy=deepspeed "
            "supports one optimizer; train this stage with `trainer=ddp`"
        )
    if trainer_cfg.deepspeed_stage == 3 and trainer_cfg.ema_decay > 0:
        raise UserError(
            f"stage {name!r}: EMA (trainer.ema_decay={trainer_cfg.ema_decay}) keeps full copies of weights that "
            "ZeRO-3 partitions across ranks; set trainer.ema_decay=0, or use trainer=deepspeed_zero2 or trainer=ddp"
        )
    if media_needs_all_ranks(trainer_cfg):
        rank_zero_info(
            f"stage {name!r}: under ZeRO-3 every forward pass gathers partitioned parameters, so media sampling "
            "runs on all ranks"
        )


def media_needs_all_ranks(trainer_cfg: TrainerConfig) -> bool:
    """True when ``log_media`` must run on every rank: under ZeRO-3 sampling gathers partitioned parameters."""
    return trainer_cfg.strategy == "deepspeed" and trainer_cfg.deepspeed_stage == 3


def build_strategy(trainer_cfg: TrainerConfig, stage_module) -> tuple[Any, dict[str, Any]]:
    """The Lightning strategy for ``trainer.strategy`` and the Trainer kwargs it decides (``precision``)."""
    timeout = timedelta(seconds=trainer_cfg.process_timeout_s)
    on_gpu = uses_gpu(trainer_cfg)
    extra = {"precision": resolve_precision(trainer_cfg)}
    if trainer_cfg.strategy == "ddp":
        backend = "nccl" if on_gpu else "gloo"
        return DDPStrategy(process_group_backend=backend, timeout=timeout), extra
    if trainer_cfg.strategy == "deepspeed":
        check_deepspeed_stage(trainer_cfg, stage_module)
        configure_torch_extensions_dir()
        batch_size = stage_module.data_cfg.batch_size
        config = deepspeed_config(trainer_cfg, batch_size)
        rank_zero_info("DeepSpeed config:\n" + json.dumps(config, indent=2, sort_keys=True))
        strategy = CPUCapableDeepSpeedStrategy(
            config=config,
            process_group_backend="nccl" if on_gpu else "gloo",
            timeout=timeout,
            logging_level=40,
            precision_plugin=AutocastDeepSpeedPrecision() if "torch_autocast" in config else None,
        )
        return strategy, {} if "torch_autocast" in config else extra
    return "auto", extra
