"""Config composition: merge order, overrides, and the errors a user sees."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ConfigError, compose, load_group_file


@pytest.fixture()
def configs(tmp_path, monkeypatch) -> Path:
    """A private configs/ tree so that the test controls every layer of the merge."""
    root = tmp_path / "configs"
    for group in ("stage", "data", "trainer", "tracking", "experiment"):
        (root / group).mkdir(parents=True)
    (root / "stage" / "conre.yaml").write_text("name: conre\nlr: 1.0e-4\nembed_dim: 256\n")
    (root / "data" / "synthetic.yaml").write_text("name: synthetic\nbatch_size: 4\nresolution: 128\n")
    (root / "data" / "other.yaml").write_text("name: other\nbatch_size: 7\n")
    (root / "trainer" / "cpu.yaml").write_text("accelerator: cpu\nmax_steps: 10\n")
    (root / "trainer" / "long.yaml").write_text("accelerator: cpu\nmax_steps: 1000\n")
    (root / "tracking" / "offline.yaml").write_text("mode: offline\n")
    (root / "experiment" / "exp.yaml").write_text(
        "defaults:\n  trainer: long\n"
        "data:\n  batch_size: 8\n"
        "stages:\n  conre:\n    stage:\n      embed_dim: 32\n    data:\n      resolution: 64\n"
    )
    monkeypatch.setenv("SEESPEAKER_CONFIGS", str(root))
    return root


def test_merge_order_defaults_files_experiment_stage_section_command_line(configs):
    cfg = compose(["experiment=exp", "stage=conre"])
    assert cfg.stage.lr == 1.0e-4  # stage file over schema default
    assert cfg.stage.embed_dim == 32  # experiment's per-stage section over the stage file
    assert cfg.data.batch_size == 8  # experiment section over the data group file
    assert cfg.data.resolution == 64  # per-stage data delta
    assert cfg.trainer.max_steps == 1000  # experiment's defaults list picks trainer=long
    assert cfg.trainer.devices == 1  # schema default where nobody sets it


def test_command_line_group_choice_and_overrides_win(configs):
    cfg = compose(["experiment=exp", "stage=conre", "trainer=cpu", "stage.embed_dim=16", "seed=7", "resume=false"])
    assert cfg.trainer.max_steps == 10
    assert cfg.stage.embed_dim == 16
    assert cfg.experiment.seed == 7
    assert cfg.run.resume == "false"


def test_derived_run_folders_and_global_batch(configs):
    cfg = compose(["experiment=exp", "stage=conre", "trainer.devices=2", "trainer.num_nodes=3",
                   "trainer.accumulate_grad_batches=4", "run.name=ablation"])
    assert cfg.run.dir == str(Path("outputs") / "exp" / "conre-ablation")
    assert cfg.run.stages_dir == str(Path("outputs") / "exp" / "stages")
    assert cfg.global_batch == 8 * 2 * 3 * 4


def test_unknown_key_names_key_source_and_allowed_keys(configs):
    with pytest.raises(ConfigError) as err:
        compose(["experiment=exp", "stage=conre", "trainer.max_stepz=3"])
    message = str(err.value)
    assert "trainer.max_stepz" in message and "command line" in message and "max_steps" in message


def test_typo_in_a_file_names_that_file(configs):
    (configs / "data" / "synthetic.yaml").write_text("name: synthetic\nbatch_sise: 4\n")
    with pytest.raises(ConfigError) as err:
        compose(["experiment=exp", "stage=conre"])
    assert "synthetic.yaml" in str(err.value) and "batch_sise" in str(err.value)


def test_wrong_type_and_invalid_choice(configs):
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        compose(["experiment=exp", "stage=conre", "trainer.max_steps=many"])
    with pytest.raises(ConfigError, match="ddp"):
        compose(["experiment=exp", "stage=conre", "trainer.strategy=horovod"])
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        compose(["experiment=exp", "stage=conre", "data.batch_size=0"])


def test_unknown_group_choice_lists_the_choices(configs):
    with pytest.raises(ConfigError) as err:
        compose(["experiment=exp", "stage=conre", "data=hdtff"])
    assert "hdtff" in str(err.value) and "other" in str(err.value) and "synthetic" in str(err.value)


def test_missing_stage_and_malformed_word(configs):
    with pytest.raises(ConfigError, match="no stage chosen"):
        compose(["experiment=exp"])
    with pytest.raises(ConfigError, match="not group=choice or key=value"):
        compose(["experiment=exp", "stage=conre", "trainer.max_steps"])


def test_standalone_group_file_requires_its_fields(tmp_path, monkeypatch):
    from dataclasses import dataclass

    from omegaconf import MISSING

    @dataclass
    class Profile:
        partition: str = MISSING
        cpus: int = 2

    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "p.yaml").write_text("cpus: 4\n")
    monkeypatch.setenv("SEESPEAKER_CONFIGS", str(tmp_path))
    with pytest.raises(ConfigError, match="partition"):
        load_group_file("slurm", "p", Profile)


def test_shipped_configs_compose_for_every_shipped_experiment():
    for experiment in ("tiny", "small"):
        cfg = compose([f"experiment={experiment}", "stage=conre"])
        assert cfg.experiment.scale == experiment
