"""The end-to-end table's evaluation on untrained tiny stages: every row of every clip scored through one path, the
rows that share a run sharing it (no codebook is the full run's prefix, the other speech changes only what hears it),
the portrait rows animated from the faces they name, and the picture written."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict

import pytest
import torch
from PIL import Image

from datamodules.config import DataConfig
from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_parts import CodebookConfig
from lightning_modules.stagefile import StageFile, save_stage_file
from reports import results_e2e_eval as ev
from reports.progress import ChunkProgress
from tests.integration.tiny_stages import make_generation_stages
from tests.unit.stage1_helpers import make_stage1_inputs
from tests.unit.test_codebook_results import PixelFeatures
from tests.unit.test_evaluation_progress import Stopped, StopsAfter

HR = 128


def evaluation_args(root, data) -> tuple:
    stages = root / "stages"
    return stages, root / "no_prior", stages / "syncnet.safetensors", root / "judge" / "conre.safetensors", data


def evaluation_options(root) -> dict:
    return {"seed": 0, "extractor": PixelFeatures(), "feature_cache": root / "features"}


@pytest.fixture(scope="module")
def evaluated(synthetic_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    stages = make_generation_stages(root / "stages")
    torch.manual_seed(0)
    cfg = CodebookConfig(base_channels=4, channel_multipliers=[1, 2, 2, 4], blocks_per_level=1, lr_base_channels=8,
                         lr_channel_multipliers=[1, 2, 4], codebook_size=32, code_dim=8, transformer_layers=1,
                         transformer_width=32, transformer_heads=4, phase="render")
    module = CodebookStage(cfg, DataConfig(resolution=64, hr_resolution=HR), load_earlier=False)
    save_stage_file(stages / "codebook.safetensors", StageFile(stage="codebook", state=module.state_dict(),
                                                               config=asdict(module.cfg), phase="render"))
    no_prior = root / "no_prior"
    no_prior.mkdir()
    for name in ("conre", "autoencoder", "portrait_diffusion"):
        shutil.copy2(stages / f"{name}.safetensors", no_prior)
    make_stage1_inputs(root / "judge", resolution=64, seed=1)
    portraits = {}
    original = ev.portraits
    patch = pytest.MonkeyPatch()
    for name, value in (("CLIPS", 2), ("MEASURE_SIZE", HR), ("KID_SUBSET", 4), ("PICTURE_SPEAKERS", 2),
                        ("IMAGE", root / "speakers.png"),
                        ("portraits", lambda *args: portraits.update(original(*args)) or portraits)):
        patch.setattr(ev, name, value)
    data = DataConfig(root=str(synthetic_corpus), resolution=64, clip_frames=10, batch_size=2)
    result = ev.evaluate_e2e(*evaluation_args(root, data), **evaluation_options(root))
    yield result, portraits, root, data
    patch.undo()


def test_every_row_scores_every_clip(evaluated):
    result, _, root, _ = evaluated
    keys = set(result["speakers"])
    assert len(keys) == 2 and set(result["per_clip"]) == set(ev.ROWS)
    measures = None
    for row in ev.ROWS:
        assert set(result["per_clip"][row]) == keys
        for values in result["per_clip"][row].values():
            measures = measures or set(values)
            assert set(values) == measures and math.isfinite(values["lse_c"]) and math.isfinite(values["lse_d"])
            assert math.isfinite(values["identity_conre"]) and 0 <= values["mouth_face_rate"] <= 1
    assert {"mouth_r", "mouth_margin", "mouth_truth_r", "identity_dlib", "temporal_consistency"} <= measures
    assert Image.open(root / "speakers.png").size == (8 * HR, 2 * HR)  # real, portrait, 6 frames; 2 speakers


def test_the_truth_row_scores_the_real_clip_against_itself(evaluated):
    result, *_ = evaluated
    for values in result["per_clip"]["truth"].values():
        assert values["temporal_consistency"] == 0
        assert values["mouth_face_rate"] >= 0.9 and values["mouth_truth_r"] > 0.5  # dlib reads the real mouth


def test_rows_that_share_a_run_share_it(evaluated):
    result, *_ = evaluated
    full, mismatched = result["per_clip"]["full"], result["per_clip"]["mismatched"]
    for key in full:  # the same frames heard with other speech: only the sync measures can change
        assert mismatched[key]["temporal_consistency"] == full[key]["temporal_consistency"]
        assert mismatched[key]["identity_conre"] == full[key]["identity_conre"]
        assert mismatched[key]["lse_d"] != full[key]["lse_d"]
    rows = result["rows"]
    assert "truth" not in rows and rows["mismatched"]["kid"] == rows["full"]["kid"]
    assert "fid" in rows["full"] and "fid" not in rows["no_saw"]
    assert rows["full"]["fid_frames"] == 2 * result["frames_per_clip"]
    assert rows["no_saw"]["kid_frames"] == 2 * result["frames_per_clip"] // ev.STRIDE


def test_portrait_rows_animate_the_faces_they_name(evaluated):
    from reports.eval_inputs import first_frames, test_clips

    _, portraits, _, data = evaluated
    clips = test_clips(data, 2)
    assert torch.equal(portraits["real_portrait"], torch.stack([c["frames"][0] for c in clips]))
    assert torch.equal(portraits["mean_face"][0], portraits["mean_face"][1])
    train = first_frames(data, "train")["frames"]
    for face in portraits["nearest_voice"]:  # a training speaker's real first frame
        assert any(torch.equal(face, real) for real in train)
    test_speakers = {c["speaker"] for c in clips}
    assert not test_speakers & set(first_frames(data, "train")["speaker_id"])
    assert not torch.equal(portraits["full"], portraits["no_saw"])  # SAW's weight against the constant one


def test_the_table_is_made_from_the_result(evaluated):
    from reports.results_e2e import ABLATIONS, METRICS, e2e_table

    result, *_ = evaluated
    table = e2e_table([{"seed": 0, **result}, {"seed": 1, **result}])
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| videos")]
    assert [line.split(" | ")[0][2:] for line in rows] == list(ev.ROWS.values())
    assert all(line.count(" | ") == len(METRICS) + 2 for line in rows)
    assert table.count("- full − ") == len(ABLATIONS) and "± 0.000 [" in table  # two equal seeds: no spread


def test_an_evaluation_stopped_after_a_clip_resumes_there_and_gives_the_unstopped_result(evaluated, monkeypatch):
    result, _, root, data = evaluated
    path, key = root / "eval.progress.pt", {"code": "this"}
    picture = (root / "speakers.png").read_bytes()
    (root / "speakers.png").unlink()
    with pytest.raises(Stopped):
        ev.evaluate_e2e(*evaluation_args(root, data), **evaluation_options(root), progress=StopsAfter(path, key, 1))
    clips, real_clip = [], ev.real_clip
    monkeypatch.setattr(ev, "real_clip", lambda clip, *rest: clips.append(clip["key"]) or real_clip(clip, *rest))
    resumed = ev.evaluate_e2e(*evaluation_args(root, data), **evaluation_options(root),
                              progress=ChunkProgress(path, key))
    assert len(clips) == 1  # the first clip is not done again
    assert json.dumps(resumed, sort_keys=True) == json.dumps(result, sort_keys=True)
    assert (root / "speakers.png").read_bytes() == picture  # the first clip's row of the picture was kept
