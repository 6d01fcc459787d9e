"""The one way to rebuild an exported stage (``StageFiles`` -> typed config -> ``for_inference``) and the stage
graph that orders the stages."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file

from datamodules.config import DataConfig
from lightning_modules.autoencoder import AutoencoderStage
from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_parts import CodebookConfig
from lightning_modules.conre import ConReStage
from lightning_modules.lip_enhancer import LipEnhancerStage
from lightning_modules.motion_diffusion import MotionDiffusionConfig, MotionDiffusionStage
from lightning_modules.portrait_diffusion import PortraitDiffusionStage
from lightning_modules.registry import FACE_PRIOR, STAGES, requires, training_order
from lightning_modules.saw import SAWStage
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles, save_stage_file
from lightning_modules.syncnet import SyncNetStage
from tests.integration.tiny_stages import make_generation_stages


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    stages = make_generation_stages(tmp_path_factory.mktemp("stages"))
    cfg = CodebookConfig(base_channels=4, channel_multipliers=[1, 2, 2, 4, 4], blocks_per_level=1, lr_base_channels=8,
                         lr_channel_multipliers=[1, 2, 4], codebook_size=32, code_dim=8, transformer_layers=1,
                         transformer_width=32, transformer_heads=4, window_frames=4, phase="render")
    module = CodebookStage(cfg, DataConfig(resolution=64, hr_resolution=256), load_earlier=False)
    save_stage_file(stages / "codebook.safetensors", StageFile(stage="codebook", state=module.state_dict(),
                                                               config=asdict(module.cfg), phase="render"))
    return stages


def same_weights(network: torch.nn.Module, stage: StageFile, prefix: str) -> bool:
    state = stage.sub_state(prefix)
    own = network.state_dict()
    return set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in state)


def test_every_stage_export_is_rebuilt_with_its_weights(folder):
    files = StageFiles(folder)
    conre = ConReStage.for_inference(files)
    assert same_weights(conre.speech, files["conre"], "speech_encoder")
    assert same_weights(conre.face, files["conre"], "face_encoder")
    vae = AutoencoderStage.for_inference(files)
    assert same_weights(vae.vae, files["autoencoder"], "vae") and not vae.vae.training
    assert vae.scaling_factor == pytest.approx(float(files["autoencoder"].state["scaling_factor"]))
    portrait = PortraitDiffusionStage.for_inference(files)
    assert same_weights(portrait.denoiser, files["portrait_diffusion"], "model") and portrait.saw is None
    saw = SAWStage.for_inference(files)
    assert (same_weights(saw.saw, files["saw"], "saw")
            and same_weights(saw.denoiser, files["portrait_diffusion"], "model"))
    expert = SyncNetStage.for_inference(files)
    assert same_weights(expert.expert, files["syncnet"], "expert") and expert.cfg.layout == "compact"
    motion = MotionDiffusionStage.for_inference(files)
    for name in ("motion_encoder", "motion_denoiser", "frame_denoiser"):
        assert same_weights(getattr(motion, name), files["motion_diffusion"], name)
    lips = LipEnhancerStage.for_inference(files)
    assert same_weights(lips.refiner, files["lip_enhancer"], "refiner")
    codebook = CodebookStage.for_inference(files)
    assert codebook.cfg.phase == "render" and not codebook.training
    assert all(torch.equal(codebook.state_dict()[k], v) for k, v in files["codebook"].state.items())


def rewrite_config(source, target, change) -> None:
    """Copy a stage file with its config changed by ``change(config)``."""
    from safetensors import safe_open
    with safe_open(str(source), framework="pt") as fh:
        metadata = dict(fh.metadata())
    config = json.loads(metadata["config"])
    change(config)
    metadata["config"] = json.dumps(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(source)), str(target), metadata=metadata)


def test_a_file_whose_config_has_a_key_the_schema_lacks_is_refused(folder, tmp_path):
    rewrite_config(folder / "syncnet.safetensors", tmp_path / "syncnet.safetensors",
                   lambda c: c.update(dilation=2))
    with pytest.raises(StageFileError, match=r"'stage\.dilation' is not in this seespeaker's SyncNetConfig.*retrain"):
        SyncNetStage.for_inference(StageFiles(tmp_path))


def test_a_nested_unknown_key_is_named_with_its_path(folder, tmp_path):
    rewrite_config(folder / "autoencoder.safetensors", tmp_path / "autoencoder.safetensors",
                   lambda c: c["vae"].update(attention_heads=8))
    with pytest.raises(StageFileError, match=r"'stage\.vae\.attention_heads'"):
        AutoencoderStage.for_inference(StageFiles(tmp_path))


def test_a_missing_key_needs_a_recorded_default(folder, tmp_path):
    rewrite_config(folder / "lip_enhancer.safetensors", tmp_path / "lip_enhancer.safetensors",
                   lambda c: c.pop("audio_radius"))
    with pytest.raises(StageFileError, match=r"'stage\.audio_radius' is missing.*records no default"):
        LipEnhancerStage.for_inference(StageFiles(tmp_path))


def test_files_written_before_an_option_get_its_recorded_default(folder, tmp_path):
    def before_the_options(config):
        config.pop("motion_maps")
        config.pop("motion_prediction_type")
        config["prediction_type"] = "v_prediction"

    for name in ("conre", "autoencoder"):
        (tmp_path / f"{name}.safetensors").write_bytes((folder / f"{name}.safetensors").read_bytes())
    rewrite_config(folder / "motion_diffusion.safetensors", tmp_path / "motion_diffusion.safetensors",
                   before_the_options)
    cfg = StageFiles(tmp_path)["motion_diffusion"].typed_config(MotionDiffusionConfig)
    assert cfg.motion_maps is False and cfg.motion_prediction_type == "v_prediction"


def test_a_missing_stage_file_says_how_to_make_it(tmp_path):
    with pytest.raises(StageFileError, match=r"saw needs the exported 'syncnet'.*stage=syncnet"):
        StageFiles(tmp_path, needed_by="saw")["syncnet"]


def test_the_graph_trains_every_requirement_first():
    order = training_order(tuple(STAGES))
    assert sorted(order) == sorted((*STAGES, FACE_PRIOR))
    for node in order:
        assert all(order.index(needed) < order.index(node) for needed in requires(node)), node
    assert order.index(FACE_PRIOR) == order.index("autoencoder") + 1


def test_the_graph_follows_the_config():
    assert requires("codebook", CodebookConfig(render_source="degraded")) == ()
    motion = CodebookConfig(render_source="motion")
    assert requires("codebook", motion) == ("conre", "autoencoder", "motion_diffusion")
    assert training_order(["codebook"], lambda stage: motion) == ["conre", "autoencoder", "motion_diffusion",
                                                                  "codebook"]
    assert FACE_PRIOR in requires("portrait_diffusion")


def test_a_stage_file_is_readable_by_the_group_as_the_umask_allows(tmp_path):
    import os

    from common.files import current_umask
    path = tmp_path / "conre.safetensors"
    save_stage_file(path, StageFile(stage="conre", state={"w": torch.zeros(2)}, config={}))
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~current_umask()  # safetensors alone would make it 0600
