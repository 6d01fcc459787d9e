"""`seespeaker export` and the files a user already has: a folder as --out, a stage file of another stage, a file
that is no stage file, a suffix the readers would not recognise, and an exported file given as the source."""
from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.stagefile import load_stage_file
from trainer.cli import main


def checkpoint(path: Path, stage: str, step: int) -> Path:
    """A Lightning checkpoint as a seespeaker stage saves it (``LightningModuleBase.on_save_checkpoint``)."""
    torch.manual_seed(step)
    torch.save({"state_dict": {"net.weight": torch.randn(3, 3)}, "global_step": step, "epoch": 0,
                "seespeaker": {"stage": stage, "config": {"stage": {"name": stage}}, "provenance": {}, "phase": ""}},
               path)
    return path


def test_a_folder_as_out_receives_the_stage_file_named_by_its_stage(tmp_path, capsys):
    folder = tmp_path / "stages"
    folder.mkdir()
    assert main(["export", str(checkpoint(tmp_path / "a.ckpt", "conre", 5)), "--out", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "conre.safetensors")
    assert load_stage_file(folder / "conre.safetensors", expect_stage="conre").provenance["global_step"] == 5


def test_a_stage_file_of_another_stage_is_kept(tmp_path, capsys):
    conre = tmp_path / "conre.safetensors"
    assert main(["export", str(checkpoint(tmp_path / "c.ckpt", "conre", 5)), "--out", str(conre)]) == 0
    before = conre.read_bytes()
    autoencoder = checkpoint(tmp_path / "ae.ckpt", "autoencoder", 7)
    assert main(["export", str(autoencoder), "--out", str(conre)]) == 2
    err = capsys.readouterr().err
    assert "holds stage 'conre'" in err and "stage 'autoencoder'" in err and "autoencoder.safetensors" in err
    assert conre.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.ckpt", "c.ckpt", "conre.safetensors"]  # no leftovers


def test_the_same_stage_replaces_its_earlier_file_and_says_so(tmp_path, capsys):
    out = tmp_path / "conre.safetensors"
    assert main(["export", str(checkpoint(tmp_path / "old.ckpt", "conre", 5)), "--out", str(out)]) == 0
    assert "replaced" not in capsys.readouterr().out
    assert main(["export", str(checkpoint(tmp_path / "new.ckpt", "conre", 9)), "--out", str(out)]) == 0
    assert f"replaced the earlier conre stage file {out}" in capsys.readouterr().out
    assert load_stage_file(out).provenance["global_step"] == 9


def test_a_file_that_is_not_a_stage_file_is_kept(tmp_path, capsys):
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    assert main(["export", str(checkpoint(tmp_path / "c.ckpt", "conre", 5)), "--out", str(notes)]) == 2
    assert "is not a stage file; it is kept" in capsys.readouterr().err
    assert notes.read_text() == "my notes"


def test_an_out_without_the_safetensors_suffix_is_refused(tmp_path, capsys):
    out = tmp_path / "conre.pt"  # render and the loaders tell a stage file from a torch file by this suffix
    assert main(["export", str(checkpoint(tmp_path / "c.ckpt", "conre", 5)), "--out", str(out)]) == 2
    assert str(tmp_path / "conre.safetensors") in capsys.readouterr().err
    assert not out.exists()


def test_an_exported_file_as_the_source_says_what_export_reads(tmp_path, capsys):
    stage_file = tmp_path / "conre.safetensors"
    assert main(["export", str(checkpoint(tmp_path / "c.ckpt", "conre", 5)), "--out", str(stage_file)]) == 0
    assert main(["export", str(stage_file)]) == 2
    assert f"{stage_file} is already an exported stage file" in capsys.readouterr().err


def test_a_torch_file_that_is_no_checkpoint_is_named_not_a_traceback(tmp_path, capsys):
    bare = tmp_path / "weights.ckpt"
    torch.save(torch.zeros(3), bare)
    assert main(["export", str(bare), "--out", str(tmp_path / "conre.safetensors")]) == 2
    assert "has no 'state_dict': it is not a Lightning checkpoint" in capsys.readouterr().err
