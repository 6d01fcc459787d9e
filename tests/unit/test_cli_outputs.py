"""What `seespeaker generate`, `render` and `prior` do with the user's files and flags before any work: an output that
is a folder or one of the inputs, an existing output (replaced, and said so), numbers out of range and unknown
devices — each an error naming the flag, with exit code 2 and no traceback."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from lightning_modules.nets.codeformer import CodeFormerNet, CodeFormerSizes
from lightning_modules.stagefile import StageFile, save_stage_file
from trainer.cli import main


@pytest.fixture
def speech(tmp_path) -> Path:
    t = np.arange(8000) / 16000
    sf.write(path := tmp_path / "speech.wav", (0.3 * np.sin(2 * np.pi * 170 * t)).astype(np.float32), 16000)
    return path


def generate(speech: Path, stages: Path, out: Path, *words: str) -> int:
    return main(["generate", "--audio", str(speech), "--stages", str(stages), "--out", str(out), *words])


def test_generate_refuses_flags_out_of_range_before_reading_a_stage(speech, tmp_path, capsys):
    stages = tmp_path / "stages"
    stages.mkdir()  # empty: every case must stop before a stage file is looked for
    cases = [(["--batch-frames", "0"], "--batch-frames 0: must be at least 1"),
             (["--steps", "0"], "--steps 0: must be at least 1"),
             (["--resolution", "-64"], "--resolution -64: must be at least 0"),
             (["--frame-steps", "-1"], "--frame-steps -1: must be at least 0"),
             (["--fidelity", "3"], "--fidelity 3.0: w must be in [0, 1]"),
             (["--device", "gpu0"], "--device gpu0: not a device; use cpu, cuda, cuda:N or auto"),
             (["--save-portrait", str(tmp_path / "face.jpg")], "the portrait is written as a PNG"),
             (["--out", str(tmp_path / "talk.png")], "the video is written as an H.264 mp4; give a .mp4 path")]
    for words, message in cases:
        assert generate(speech, stages, tmp_path / "talk.mp4", *words) == 2, words
        assert message in capsys.readouterr().err
    assert generate(speech, tmp_path / "nowhere", tmp_path / "talk.mp4") == 2
    assert f"--stages {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav", "stages"]


def test_generate_never_writes_over_its_inputs_or_into_a_folder_name(speech, tmp_path, capsys):
    stages, face = tmp_path / "stages", tmp_path / "face.png"
    stages.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(face)
    before = speech.read_bytes(), face.read_bytes()
    assert generate(speech, stages, speech) == 2
    assert f"--out {speech} is the file given to --audio" in capsys.readouterr().err
    assert generate(speech, stages, tmp_path / "talk.mp4", "--portrait", str(face), "--save-portrait", str(face)) == 2
    assert f"--save-portrait {face} is the file given to --portrait" in capsys.readouterr().err
    assert generate(speech, stages, stages) == 2
    assert f"--out {stages} is a folder" in capsys.readouterr().err
    assert (speech.read_bytes(), face.read_bytes()) == before


def tiny_codeformer(path: Path) -> Path:
    torch.manual_seed(0)
    net = CodeFormerNet(CodeFormerSizes(image_size=64, base_channels=8, channel_multipliers=(1, 2, 2, 4),
                                        attention_resolutions=(8,), codebook_size=16, code_dim=8, width=16, heads=8,
                                        layers=1, ff=32, fuse_resolutions=(16, 32))).eval()
    torch.save({"params_ema": net.state_dict()}, path)
    return path


def test_render_keeps_its_input_and_says_when_it_replaces_an_output(tmp_path, capsys, recwarn):
    weights = tiny_codeformer(tmp_path / "tiny.pth")
    face = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(face)
    before = face.read_bytes()
    render = ["render", "--stage", str(weights), "--input", str(face), "--device", "cpu"]
    assert main([*render, "--out", str(face)]) == 2
    assert f"--out {face} is the file given to --input" in capsys.readouterr().err
    assert face.read_bytes() == before
    out = tmp_path / "restored.png"
    out.write_bytes(b"an earlier result")
    assert main([*render, "--out", str(out)]) == 0
    assert f"{out} exists: it is replaced" in capsys.readouterr().out
    assert Image.open(out).size == (64, 64)
    assert not [w for w in recwarn if "not writable" in str(w.message)]  # the image reaches torch as a copy
    conre = save_stage_file(tmp_path / "conre.safetensors", StageFile(stage="conre", state={"w": torch.zeros(1)}))
    for words, message in ((["--batch-frames", "0"], "--batch-frames 0: must be at least 1"),
                           (["--device", "gpu0"], "--device gpu0: not a device"),
                           (["--stage", str(tmp_path)], f"--stage {tmp_path} is a folder"),
                           (["--stage", str(conre)], "holds stage 'conre'; render takes the codebook stage"),
                           (["--detail-scale", "1.5"], "--detail-scale 1.5: s must be in [0, 1]"),
                           (["--detail-scale", "0.5"], "CodeFormer's network")):
        assert main([*render, "--out", str(tmp_path / "x.png"), *words]) == 2, words
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_prior_refuses_a_folder_as_out_before_streaming_any_shard(tmp_path, capsys):
    from lightning_modules.autoencoder import AutoencoderStage
    from tests.unit.stage1_helpers import export, tiny_autoencoder, tiny_data
    from tests.unit.test_prior import write_clips

    write_clips(tmp_path / "data", count=3)
    folder = tmp_path / "stages"
    export(AutoencoderStage(tiny_autoencoder(), tiny_data()), folder / "autoencoder.safetensors")
    prior = ["prior", "--data", str(tmp_path / "data"), "--stages", str(folder), "--resolution", "32"]
    assert main([*prior, "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"--out {folder} is a folder" in err and str(folder / "face_prior.safetensors") in err
    out = folder / "face_prior.safetensors"
    out.write_bytes(b"an earlier prior")
    assert main([*prior, "--out", str(out), "--pca", "100000"]) == 0
    printed = capsys.readouterr().out
    assert f"{out} exists: it is replaced" in printed
    assert "3 faces" in printed and "latent (4, 8, 8), pca 256," in printed  # the basis kept: at most 4 x 8 x 8
