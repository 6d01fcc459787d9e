"""GPU knobs of the trainer group: torch.compile of the trained networks, channels-last, the DeepSpeed tuning."""
from __future__ import annotations

import torch

from trainer.factory import apply_speed_knobs, trained_networks
from trainer.schemas import TrainerConfig
from trainer.strategies import deepspeed_config


class Stage(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trained = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1))
        self.frozen = torch.nn.Conv2d(3, 3, 1).requires_grad_(False)


def test_compile_marks_the_trained_networks_only_and_keeps_the_state_dict_keys():
    stage = Stage()
    keys = list(stage.state_dict())
    assert trained_networks(stage) == [stage.trained, stage.trained[0], stage.trained[1]]
    apply_speed_knobs(stage, TrainerConfig(compile=True))
    assert stage.trained._compiled_call_impl is not None and stage.frozen._compiled_call_impl is None
    compiled = stage.trained._compiled_call_impl
    apply_speed_knobs(stage, TrainerConfig(compile=True))  # a second call compiles nothing again
    assert stage.trained._compiled_call_impl is compiled
    assert list(stage.state_dict()) == keys


def test_defaults_leave_the_networks_alone_and_channels_last_is_asked_for():
    stage = Stage()
    apply_speed_knobs(stage, TrainerConfig())
    assert stage.trained._compiled_call_impl is None
    assert not stage.trained[0].weight.is_contiguous(memory_format=torch.channels_last)
    apply_speed_knobs(stage, TrainerConfig(channels_last=True))
    assert stage.trained[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_deepspeed_overlaps_communication_only_where_there_is_some():
    one = TrainerConfig(accelerator="gpu", strategy="deepspeed", devices=1, precision="bf16-mixed")
    eight = TrainerConfig(accelerator="gpu", strategy="deepspeed", devices=8, precision="bf16-mixed",
                          deepspeed_bucket_size=50_000_000)
    assert deepspeed_config(one, 4)["zero_optimization"]["overlap_comm"] is False  # one GPU: nothing to overlap
    zero = deepspeed_config(eight, 4)["zero_optimization"]
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 50_000_000
    assert TrainerConfig(deepspeed_bucket_size=0).validate()


def test_gradient_checkpointing_reaches_the_trained_diffusers_models_only():
    from diffusers import UNet2DModel

    from trainer.factory import gradient_checkpointing

    def unet() -> UNet2DModel:
        blocks = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}
        return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4,
                           layers_per_block=1, **blocks)

    stage = torch.nn.Module()
    stage.trained, stage.frozen = unet(), unet().requires_grad_(False)
    assert gradient_checkpointing(stage) == 1
    assert stage.trained.is_gradient_checkpointing and not stage.frozen.is_gradient_checkpointing
