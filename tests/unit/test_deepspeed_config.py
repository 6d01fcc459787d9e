"""The DeepSpeed config generated from the trainer config, the strategy presets and the refusals, and the
safety and completeness checks of DeepSpeed checkpoint directories."""
from __future__ import annotations

import json
import pickle
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy

from common.errors import UserError
from datamodules.config import DataConfig
from lightning_modules.base import StageConfig, StageModule
from trainer.config import load_group_file
from trainer.deepspeed_checkpoint import (
    DeepSpeedCheckpointError,
    clear_complete,
    is_complete,
    is_deepspeed_checkpoint,
    load_deepspeed_checkpoint,
    mark_complete,
)
from trainer.schemas import TrainerConfig
from trainer.strategies import CPUCapableDeepSpeedStrategy, build_strategy, deepspeed_config, media_needs_all_ranks


class TwoOptimizerStage(StageModule):
    num_optimizers = 2


def stage(batch_size: int = 8, cls=StageModule) -> StageModule:
    data = DataConfig()
    data.batch_size = batch_size
    return cls(StageConfig(name="toy"), data)


def test_zero2_config_carries_batch_accumulation_and_clipping():
    cfg = TrainerConfig(accelerator="cpu", strategy="deepspeed", deepspeed_stage=2, accumulate_grad_batches=4,
                        gradient_clip_val=0.5)
    config = deepspeed_config(cfg, data_batch_size=6)
    assert config["train_micro_batch_size_per_gpu"] == 6
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    zero = config["zero_optimization"]
    assert zero["stage"] == 2 and zero["contiguous_gradients"] is True
    assert zero["allgather_bucket_size"] > 0 and zero["reduce_bucket_size"] > 0
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert "bf16" not in config  # 32-true on CPU
    assert "zero_force_ds_cpu_optimizer" not in config
    json.dumps(config)  # a plain JSON document


def test_zero3_offload_on_gpu_offloads_optimizer_and_parameters_in_bf16():
    cfg = TrainerConfig(accelerator="gpu", strategy="deepspeed", precision="bf16-mixed", deepspeed_stage=3,
                        deepspeed_offload=True, gradient_clip_val=0.0, ema_decay=0.0)
    config = deepspeed_config(cfg, data_batch_size=16)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["overlap_comm"] is True
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["stage3_prefetch_bucket_size"] > 0 and "allgather_bucket_size" not in zero
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and config["bf16"] == {"enabled": False}
    assert config["gradient_clipping"] == 0.0
    assert "zero_force_ds_cpu_optimizer" not in config  # GPUs run offloaded states on DeepSpeedCPUAdam


def test_offload_below_zero3_offloads_the_optimizer_only():
    zero = deepspeed_config(TrainerConfig(strategy="deepspeed", deepspeed_stage=2, deepspeed_offload=True), 4)
    assert zero["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in zero["zero_optimization"]


def test_bf16_requested_on_cpu_trains_in_fp32():
    cfg = TrainerConfig(accelerator="cpu", strategy="deepspeed", precision="bf16-mixed", ema_decay=0.0)
    strategy, extra = build_strategy(cfg, stage())
    assert extra["precision"] == "32-true"
    assert "bf16" not in strategy.config


def test_bf16_mixed_under_deepspeed_keeps_fp32_weights_and_batch():
    """DeepSpeed's own bf16 casts the weights, and Lightning's plugin the batch, to bf16: a float32 made inside the
    forward (the log-mel of the speech) then meets bf16 weights. Mixed precision is torch autocast instead."""
    cfg = TrainerConfig(accelerator="gpu", strategy="deepspeed", precision="bf16-mixed", ema_decay=0.0)
    strategy, extra = build_strategy(cfg, stage())
    assert "precision" not in extra and strategy.precision_plugin.precision == "bf16-mixed"
    batch = {"audio": torch.randn(2, 8), "speaker_index": torch.arange(2)}
    assert strategy.precision_plugin.convert_input(batch)["audio"].dtype == torch.float32
    true_bf16 = deepspeed_config(TrainerConfig(accelerator="gpu", strategy="deepspeed", precision="bf16-true"), 4)
    assert true_bf16["bf16"] == {"enabled": True, "check_grad_overflow": True} and "torch_autocast" not in true_bf16


@pytest.mark.parametrize("preset", ["cpu", "ddp", "deepspeed_zero2", "deepspeed_zero3_offload"])
def test_presets_are_valid_trainer_configs(preset):
    cfg = load_group_file("trainer", preset, TrainerConfig)
    expected = {"cpu": ("auto", "32-true"), "ddp": ("ddp", "bf16-mixed"),
                "deepspeed_zero2": ("deepspeed", "bf16-mixed"), "deepspeed_zero3_offload": ("deepspeed", "bf16-mixed")}
    assert (cfg.strategy, cfg.precision) == expected[preset]
    assert cfg.accelerator == ("cpu" if preset == "cpu" else "gpu")
    if cfg.strategy == "deepspeed":
        config = deepspeed_config(cfg, 8)
        assert config["torch_autocast"]["enabled"] and not config["bf16"]["enabled"]
        offloaded = preset == "deepspeed_zero3_offload"
        assert config["zero_optimization"]["stage"] == (3 if offloaded else 2)
        assert ("offload_param" in config["zero_optimization"]) == offloaded


def test_zero3_offload_preset_is_accepted_on_cpu():
    cfg = load_group_file("trainer", "deepspeed_zero3_offload", TrainerConfig)
    cfg.accelerator = "cpu"
    strategy, extra = build_strategy(cfg, stage())
    assert isinstance(strategy, CPUCapableDeepSpeedStrategy) and extra["precision"] == "32-true"
    assert strategy.config["zero_optimization"]["offload_optimizer"]["pin_memory"] is False
    assert strategy.config["zero_force_ds_cpu_optimizer"] is False  # torch AdamW on CPU processes


def test_two_optimizer_stage_is_refused_under_deepspeed():
    cfg = TrainerConfig(strategy="deepspeed", ema_decay=0.0)
    with pytest.raises(UserError, match=r"2 optimizers.*trainer=ddp"):
        build_strategy(cfg, stage(cls=TwoOptimizerStage))
    strategy, _ = build_strategy(TrainerConfig(strategy="ddp"), stage(cls=TwoOptimizerStage))
    assert isinstance(strategy, DDPStrategy)


def test_ema_is_refused_under_zero3_only():
    with pytest.raises(UserError, match=r"trainer\.ema_decay=0"):
        build_strategy(TrainerConfig(strategy="deepspeed", deepspeed_stage=3, ema_decay=0.999), stage())
    strategy, _ = build_strategy(TrainerConfig(strategy="deepspeed", deepspeed_stage=2, ema_decay=0.999), stage())
    assert strategy.config["zero_optimization"]["stage"] == 2


def test_ddp_uses_gloo_on_cpu_with_the_configured_timeout():
    strategy, extra = build_strategy(TrainerConfig(strategy="ddp", process_timeout_s=42), stage())
    assert isinstance(strategy, DDPStrategy) and not isinstance(strategy, CPUCapableDeepSpeedStrategy)
    assert strategy._process_group_backend == "gloo"
    assert strategy._timeout == timedelta(seconds=42)
    assert extra == {"precision": "32-true"}
    assert build_strategy(TrainerConfig(strategy="auto"), stage())[0] == "auto"


def test_media_runs_on_all_ranks_under_zero3():
    assert media_needs_all_ranks(TrainerConfig(strategy="deepspeed", deepspeed_stage=3))
    assert not media_needs_all_ranks(TrainerConfig(strategy="deepspeed", deepspeed_stage=2))
    assert not media_needs_all_ranks(TrainerConfig(strategy="ddp"))


class WritesCanary:
    """A pickle that creates a file when unpickled without restrictions."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path):
    ckpt, canary = tmp_path / "ckpt", tmp_path / "canary"
    (ckpt / "checkpoint").mkdir(parents=True)
    (ckpt / "latest").write_text("checkpoint")
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"module": {}, "payload": WritesCanary(canary)}, ckpt / "checkpoint" / name)
    assert is_deepspeed_checkpoint(ckpt)
    with pytest.raises(DeepSpeedCheckpointError, match="could run code"):
        load_deepspeed_checkpoint(ckpt)
    assert not canary.exists()


def test_resume_reads_deepspeed_files_weights_only(tmp_path):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from trainer.deepspeed_checkpoint import weights_only_engine

    class Engine:
        checkpoint_engine = TorchCheckpointEngine()

    canary, evil, plain = tmp_path / "canary", tmp_path / "evil.pt", tmp_path / "plain.pt"
    torch.save({"payload": WritesCanary(canary)}, evil)
    torch.save({"w": torch.ones(2)}, plain)
    engine = Engine()
    with weights_only_engine(engine):
        assert torch.equal(engine.checkpoint_engine.load(str(plain))["w"], torch.ones(2))
        with pytest.raises(pickle.UnpicklingError):
            engine.checkpoint_engine.load(str(evil))
    assert not canary.exists()
    assert engine.checkpoint_engine.load.__func__ is TorchCheckpointEngine.load  # restored after the block


def test_a_path_that_is_not_a_deepspeed_directory_is_named(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert not is_deepspeed_checkpoint(tmp_path / "last.ckpt")
    with pytest.raises(DeepSpeedCheckpointError, match="not a DeepSpeed checkpoint directory"):
        load_deepspeed_checkpoint(tmp_path / "last.ckpt")


def test_completeness_marker_lists_the_files_written(tmp_path):
    folder = tmp_path / "ckpt" / "checkpoint"
    folder.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"x": torch.zeros(1)}, folder / name)
    assert not is_complete(tmp_path / "ckpt")
    mark_complete(tmp_path / "ckpt")
    assert is_complete(tmp_path / "ckpt")
    clear_complete(tmp_path / "ckpt")  # the directory is being written again
    assert not is_complete(tmp_path / "ckpt")
    mark_complete(tmp_path / "ckpt")
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert not is_complete(tmp_path / "ckpt")
