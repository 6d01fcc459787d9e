"""Config composition: merge order, overrides, and the errors a user sees."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trainer.config import ConfigError, choice_errors, compose, configs_dir, group_choices, load_group_file, read_yaml


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


def test_every_shipped_experiment_composes_with_every_shipped_stage():
    experiments, stages = group_choices("experiment"), group_choices("stage")
    assert {"tiny", "small", "paper_stage1", "paper_stage2", "paper_codebook"} <= set(experiments)
    assert len(stages) == 8
    problems = []
    for experiment in experiments:
        for stage in stages:
            try:
                cfg = compose([f"experiment={experiment}", f"stage={stage}"])
            except ConfigError as exc:
                problems.append(f"experiment={experiment} stage={stage}: {exc}")
                continue
            scale = experiment if experiment in ("tiny", "small") else "paper"
            name = {"paper_stage1": "paper", "paper_stage2": "paper", "paper_codebook": "paper"}.get(
                experiment, experiment)  # the paper chain is one experiment over three files (one stages folder)
            if (cfg.experiment.name, cfg.stage.name, cfg.experiment.scale) != (name, stage, scale):
                problems.append(f"experiment={experiment} stage={stage}: composed as "
                                f"{cfg.experiment.name}/{cfg.stage.name} at scale {cfg.experiment.scale}")
    assert not problems, "\n".join(problems)


def test_small_builds_on_tiny_and_lists_only_its_deltas():
    tiny, small = (read_yaml(configs_dir() / "experiment" / f"{name}.yaml") for name in ("tiny", "small"))
    assert small.base == "tiny"
    assert "layout" in tiny.stages.syncnet.stage and "layout" not in small.stages.syncnet.stage
    assert "resolution" in tiny.data and "resolution" not in small.data
    cfg = compose(["experiment=small", "stage=syncnet"])
    assert cfg.stage.layout == "compact" and cfg.data.resolution == 64  # set only in tiny.yaml
    assert cfg.experiment.scale == "small" and cfg.trainer.max_steps == 300  # small's own values win


def test_base_is_merged_first_then_the_files_own_sections(configs):
    (configs / "experiment" / "child.yaml").write_text(
        "base: exp\n"
        "data:\n  resolution: 32\n"
        "stages:\n  conre:\n    stage:\n      face_channels: [8]\n"
    )
    (configs / "experiment" / "grandchild.yaml").write_text("base: child\ntrainer:\n  max_steps: 5\n")
    cfg = compose(["experiment=grandchild", "stage=conre"])
    assert cfg.experiment.name == "grandchild"
    assert cfg.trainer.max_steps == 5  # grandchild over the defaults list its base chain chose (trainer=long)
    assert cfg.data.batch_size == 8  # from exp, two bases down
    assert cfg.stage.embed_dim == 32  # exp's per-stage section survives child's section for the same stage
    assert cfg.stage.face_channels == [8]  # lists are replaced, not merged
    assert cfg.data.resolution == 64  # exp's per-stage data delta still comes after every top-level section


def test_missing_base_names_the_file_and_the_experiments(configs):
    path = configs / "experiment" / "orphan.yaml"
    path.write_text("base: tinny\n")
    with pytest.raises(ConfigError) as err:
        compose(["experiment=orphan", "stage=conre"])
    message = str(err.value)
    assert str(path) in message and "tinny" in message and "exp, orphan" in message


def test_a_cycle_of_bases_is_an_error_naming_the_files(configs):
    (configs / "experiment" / "a.yaml").write_text("base: b\n")
    (configs / "experiment" / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        compose(["experiment=a", "stage=conre"])
    assert "a.yaml" in str(err.value) and "b.yaml" in str(err.value)
    (configs / "experiment" / "self.yaml").write_text("base: self\n")
    with pytest.raises(ConfigError, match="cycle"):
        compose(["experiment=self", "stage=conre"])


def test_a_bad_choice_is_rejected_once_by_the_generic_check():
    with pytest.raises(ConfigError) as err:
        compose(["experiment=tiny", "stage=portrait_diffusion", "stage.sampler=euler"])
    message = str(err.value)
    assert "stage.sampler='euler' is not one of ddim, dpm_solver" in message
    assert message.split(":\n", 1)[1].count("sampler") == 1  # no second, hand-written check in validate()


def test_choice_check_reaches_nested_dataclasses():
    @dataclass
    class Inner:
        mode: str = field(default="a", metadata={"choices": ("a", "b")})

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        level: int = field(default=1, metadata={"choices": (1, 2)})

    assert choice_errors(Outer(), "x") == []
    assert choice_errors(Outer(Inner("c"), 3), "x") == ["x.inner.mode='c' is not one of a, b",
                                                        "x.level=3 is not one of 1, 2"]


def test_an_invalid_value_from_the_command_line_is_said_to_come_from_it():
    with pytest.raises(ConfigError, match=r"tiny\.yaml with the command line tracking\.mode=bogus\):\n.*'bogus'"):
        compose(["experiment=tiny", "stage=conre", "tracking.mode=bogus"])
