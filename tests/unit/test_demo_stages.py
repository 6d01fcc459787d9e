"""The shipped demo stages (``make demo-stages``): EMA-only float16 files without discriminators or training-only
heads, a manifest of sums and provenance, and the check that fails with "stale demo stages: run `make
demo-stages`" when a file no longer matches its sum or no longer loads with generation's loaders.

The writer and the check run here on tiny untrained stages; the shipped folder (demo/) is checked the same way when
its manifest exists (it is made from the stages `make results` trains, which a fresh checkout lacks)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lightning_modules.stagefile import StageFile, load_stage_file, save_stage_file
from reports.demo_stages import (
    DEMO_STAGES,
    LIMIT_BYTES,
    MANIFEST,
    STALE,
    DemoStagesError,
    check_demo_stages,
    write_demo_stages,
)
from tests.integration.tiny_stages import make_generation_stages

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "demo"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Tiny untrained stage files of every stage generation reads; conre carries EMA weights (the raw ones + 1)
    and a provenance as `seespeaker export` records it, the codebook a render phase with its discriminator."""
    from tests.unit.codebook_helpers import tiny_stage
    root = tmp_path_factory.mktemp("demo-source")
    folder = make_generation_stages(root / "stages")
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "provenance.jsonl").write_text(json.dumps({"time": "2026-01-02T03:04:05+0000"}) + "\n")
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "time": t}) for s, t in
                                                 ((9, 1767323055.0), (19, 1767323110.5))) + "\n")
    conre = load_stage_file(folder / "conre.safetensors")
    provenance = {"command": ["cli.py", "train", "experiment=small", "stage=conre", "seed=3"],
                  "git_commit": "0123456789abcdef0123456789abcdef01234567", "host": "box", "platform": "Linux-x",
                  "python": "3.11.7", "time": "2026-01-02T03:04:05+0000", "global_step": 20,
                  "source_checkpoint": str(run / "checkpoints" / "final.ckpt"),
                  "run_config": {"data": {"root": "data/x", "resolution": 64}, "experiment": {"seed": 3}},
                  "training_key": {"corpus": {"index": "feedfacecafebeef", "version": 2}}}
    save_stage_file(folder / "conre.safetensors", StageFile(
        "conre", conre.state, {k: v + 1.0 for k, v in conre.state.items() if v.is_floating_point()},
        conre.config, provenance))
    codebook = tiny_stage("render", adversarial=True)
    assert codebook.discriminator is not None
    save_stage_file(folder / "codebook.safetensors", StageFile("codebook", codebook.state_dict(),
                                                               config=asdict(codebook.cfg), phase="render"))
    return folder


@pytest.fixture(scope="module")
def shipped(source, tmp_path_factory) -> tuple[Path, dict]:
    demo = tmp_path_factory.mktemp("demo")
    return demo, write_demo_stages(source, demo, allow_dirty=True, need_corpus=False)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def test_every_stage_generation_reads_is_shipped_as_ema_only_float16_without_training_parts(source, shipped):
    demo, manifest = shipped
    assert sorted(manifest["files"]) == sorted(f"{s}.safetensors" for s in DEMO_STAGES)
    for name, record in manifest["files"].items():
        path = demo / "stages" / name
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["bytes"] == path.stat().st_size
        saved = tensors(path)
        assert saved and all(k.startswith("model.") for k in saved)  # no raw + EMA pair: one set of weights
        assert all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
        assert not any("discriminator" in k for k in saved)
        original, shipped_file = load_stage_file(source / name), load_stage_file(path)
        assert shipped_file.config == original.config and shipped_file.provenance == original.provenance
        assert shipped_file.phase == original.phase
    assert manifest["total_bytes"] == sum(r["bytes"] for r in manifest["files"].values()) <= LIMIT_BYTES
    conre = load_stage_file(demo / "stages" / "conre.safetensors")
    assert not any(k.startswith(("predictor.", "logit_scale")) for k in conre.state)  # ConRe's training heads
    ema = load_stage_file(source / "conre.safetensors").weights(use_ema=True)
    assert all(torch.equal(v, ema[k].half()) for k, v in conre.state.items())  # the EMA weights, not the raw ones
    saw = load_stage_file(demo / "stages" / "saw.safetensors")
    assert set(k.split(".")[0] for k in saw.state) == {"saw"}  # no frozen copy of the VAE or the denoiser
    codebook = load_stage_file(source / "codebook.safetensors")
    assert any(k.startswith("discriminator.") for k in codebook.state)


def test_the_manifest_gives_each_files_provenance(shipped):
    record = shipped[1]["files"]["conre.safetensors"]
    assert record["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert record["command"] == "seespeaker train experiment=small stage=conre seed=3"
    assert record["corpus"] == {"options": {"root": "data/x", "resolution": 64}, "index": "feedfacecafebeef",
                                "version": 2}
    assert record["seed"] == 3 and record["machine"] == "box, Linux-x, 3.11.7"
    assert record["wall_seconds"] == 65.5 and record["global_step"] == 20
    assert json.loads((shipped[0] / MANIFEST).read_text()) == shipped[1]


def test_shipped_files_load_through_generations_loaders_and_a_changed_byte_is_stale(shipped, tmp_path):
    import shutil
    demo = tmp_path / "demo"
    shutil.copytree(shipped[0], demo)
    assert check_demo_stages(demo)["files"] == shipped[1]["files"]
    path = demo / "stages" / "motion_diffusion.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DemoStagesError) as error:
        check_demo_stages(demo)
    assert str(error.value).startswith(STALE) and "motion_diffusion.safetensors: sha256" in str(error.value)


def test_a_file_that_no_longer_loads_is_stale_even_with_a_matching_sum(shipped, tmp_path):
    import shutil
    demo = tmp_path / "demo"
    shutil.copytree(shipped[0], demo)
    path = demo / "stages" / "lip_enhancer.safetensors"
    stage = load_stage_file(path)
    stage.state.pop(sorted(stage.state)[0])  # as if the refiner had gained a tensor since the files were made
    save_stage_file(path, stage)
    manifest = json.loads((demo / MANIFEST).read_text())
    manifest["files"][path.name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (demo / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DemoStagesError) as error:
        check_demo_stages(demo)
    assert str(error.value).startswith(STALE) and "does not load" in str(error.value)


def test_the_writer_refuses_dirty_commits_and_oversized_sets_and_then_writes_nothing(source, tmp_path):
    with pytest.raises(DemoStagesError, match="not trained at a clean commit: .*autoencoder.safetensors"):
        write_demo_stages(source, tmp_path / "dirty", need_corpus=False)
    with pytest.raises(DemoStagesError, match="over the 0.1 MB limit"):
        write_demo_stages(source, tmp_path / "big", allow_dirty=True, need_corpus=False, limit=100_000)
    assert not (tmp_path / "dirty").exists() and not (tmp_path / "big").exists()


def test_the_shipped_demo_stages_match_their_manifest_and_load():
    manifest = check_demo_stages(SHIPPED)
    assert set(manifest["files"]) == {f"{s}.safetensors" for s in DEMO_STAGES}
    assert all(r["commit"] and not r["commit"].endswith("-dirty") for r in manifest["files"].values())
    assert manifest["corpus"]["options"] and manifest["corpus"]["test_speakers"]
