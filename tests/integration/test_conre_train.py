"""The foundation end to end: a tiny ConRe training through the CLI, export, resume, W&B offline."""
from __future__ import annotations

import json
import os

import pytest
import torch

from trainer.cli import main


@pytest.fixture(scope="module")
def conre_run(synthetic_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    words = ["train", "experiment=tiny", "stage=conre", f"data.root={synthetic_corpus}",
             f"experiment.output_root={out}", "trainer.max_steps=200"]
    assert main(words) == 0
    return out / "tiny", words


def test_training_writes_run_folder_checkpoints_and_provenance(conre_run):
    root, _ = conre_run
    run = root / "conre"
    assert (run / "config.yaml").is_file()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["command"][1:3] == ["train", "experiment=tiny"]
    assert "torch" in prov["packages"] and "pytorch-lightning" in prov["packages"]
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "final-step=200.ckpt" in ckpts and "step=50.ckpt" in ckpts
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) >= 195


def test_wandb_offline_run_holds_the_run_id(conre_run):
    run = conre_run[0] / "conre"
    run_id = (run / "wandb_id").read_text().strip()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0].name.endswith(run_id)
    assert list(offline[0].glob("*.wandb"))


def test_tiny_conre_fits_its_training_speakers(conre_run, synthetic_corpus):
    from evaluation.conre_eval import conre_retrieval
    from trainer.config import compose

    cfg = compose(["experiment=tiny", "stage=conre", f"data.root={synthetic_corpus}"])
    result = conre_retrieval(str(conre_run[0] / "stages" / "conre.safetensors"), cfg.data, "train")
    assert result.speakers >= 8
    assert result.top1 >= 0.9, result


def test_export_round_trip_equals_the_trained_module(conre_run):
    from lightning_modules.stagefile import load_stage_file
    from trainer.checkpoints import safe_load

    root = conre_run[0]
    stage = load_stage_file(root / "stages" / "conre.safetensors", expect_stage="conre")
    ckpt = safe_load(root / "conre" / "checkpoints" / "final-step=200.ckpt")
    assert set(stage.state) == set(ckpt["state_dict"])
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(stage.state[key], value.float()), key
    shadow = ckpt["callbacks"]["EMA"]["shadow"]
    assert shadow and all(torch.equal(stage.ema[k], v) for k, v in shadow.items())
    assert stage.config["embed_dim"] == 64 and stage.provenance["global_step"] == 200


def test_resume_auto_continues_the_step_count(conre_run, capsys):
    root, words = conre_run
    assert main([w if not w.startswith("trainer.max_steps") else "trainer.max_steps=220" for w in words]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "step 200" in out
    assert (root / "conre" / "checkpoints" / "final-step=220.ckpt").is_file()
    rows = [json.loads(line) for line in (root / "conre" / "metrics.jsonl").read_text().splitlines()]
    resumed = [r["step"] for r in rows if "train/loss" in r]
    assert max(resumed) >= 215
    assert len(list((root / "conre" / "wandb").glob("offline-run-*"))) == 2
    assert (root / "conre" / "wandb_id").read_text().strip() in {
        p.name.split("-")[-1] for p in (root / "conre" / "wandb").glob("offline-run-*")}


def test_missing_shards_and_config_typos_are_user_errors(synthetic_corpus, tmp_path, capsys):
    assert main(["train", "experiment=tiny", "stage=conre", f"data.root={tmp_path / 'nowhere'}",
                 f"experiment.output_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "seespeaker prepare synthetic" in err
    assert main(["train", "experiment=tiny", "stage=conre", "trainer.max_stepz=3"]) == 2
    assert "trainer.max_stepz" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "index.json").write_text(json.dumps({"dataset": "x", "schema_version": 1, "splits": {}}))
    assert main(["train", "experiment=tiny", "stage=conre", f"data.root={empty}",
                 f"experiment.output_root={tmp_path}"]) == 2
    assert "no shards for split 'train'" in capsys.readouterr().err


def test_a_distributed_training_ends_its_process_group(synthetic_corpus, tmp_path, monkeypatch):
    """A rank that exits with its process group alive can abort at interpreter shutdown ("terminate called without
    an active exception"), which fails a SLURM job whose training finished; the run destroys the group itself."""
    import torch.distributed as dist

    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)

    words = ["train", "experiment=tiny", "stage=conre", f"data.root={synthetic_corpus}", "trainer.strategy=ddp",
             "trainer.devices=1", f"experiment.output_root={tmp_path}", "trainer.max_steps=2"]
    assert main(words) == 0
    assert (tmp_path / "tiny" / "stages" / "conre.safetensors").is_file()
    assert not dist.is_initialized()
    # the address Lightning picked does not outlive the run: a later run in this process would find its port taken
    assert "MASTER_PORT" not in os.environ and "MASTER_ADDR" not in os.environ
