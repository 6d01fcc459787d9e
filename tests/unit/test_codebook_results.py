"""The codebook table's evaluation on untrained tiny stages: the bicubic row scores what a direct computation gives,
identical rows score identically (the temporal slot given the renderer's own file), the degraded set's recipes are
recorded, the gate's opening and the residual head's detail are measured, and the table text is made from the
result."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datamodules.config import DataConfig
from evaluation.degraded import degrade_real_frames
from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_parts import CodebookConfig
from lightning_modules.motion_diffusion import MotionDiffusionStage
from lightning_modules.stagefile import StageFile, save_stage_file
from reports import codebook_val, results_codebook
from reports import results_codebook_eval as ev
from reports.progress import ChunkProgress
from tests.integration.tiny_stages import tiny_motion
from tests.unit.stage1_helpers import export, make_stage1_inputs
from tests.unit.test_evaluation_progress import Stopped, StopsAfter

FRAMES, CLIPS, HR = 8, 4, 128  # 128 px targets (the table's are 256): SSIM and the renderer cost 4x less


class PixelFeatures:
    """A stand-in for the packaged Inception (about 1 s a frame on a CPU): 8 x 8 mean-pooled pixels."""

    def describe(self) -> dict:
        return {"name": "pooled pixels (test)"}

    def __call__(self, images) -> np.ndarray:
        x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255
        return F.adaptive_avg_pool2d(x, 8).flatten(1).double().numpy()


@pytest.fixture(scope="module")
def evaluated(synthetic_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("codebook-table")
    stages = root / "stages"
    make_stage1_inputs(stages, resolution=64)
    export(MotionDiffusionStage(tiny_motion(), DataConfig(resolution=64, clip_frames=FRAMES), str(stages)),
           stages / "motion_diffusion.safetensors")
    torch.manual_seed(0)
    cfg = CodebookConfig(base_channels=4, channel_multipliers=[1, 2, 2, 4], blocks_per_level=1, lr_base_channels=8,
                         lr_channel_multipliers=[1, 2, 4], codebook_size=32, code_dim=8, transformer_layers=1,
                         transformer_width=32, transformer_heads=4, window_frames=4, detail_gate=True, phase="render")
    module = CodebookStage(cfg, DataConfig(resolution=64, hr_resolution=HR), load_earlier=False)
    save_stage_file(stages / "codebook.safetensors", StageFile(stage="codebook", state=module.state_dict(),
                                                               config=asdict(module.cfg), phase="render"))
    make_stage1_inputs(root / "judge", resolution=64, seed=1)
    data = DataConfig(root=str(synthetic_corpus), resolution=64, hr_resolution=HR)
    patch = pytest.MonkeyPatch()
    for name, value in (("FRAMES_PER_CLIP", FRAMES), ("MAX_CLIPS", CLIPS), ("KID_SUBSET", 4), ("MEASURE_SIZE", HR),
                        ("IMAGE", root / "strip.png")):
        patch.setattr(ev, name, value)
    result = ev.evaluate_codebook(stages, stages, root / "judge" / "conre.safetensors", data, seed=0,
                                  extractor=PixelFeatures(), feature_cache=root / "features")
    yield result, data, root
    patch.undo()


def test_bicubic_row_scores_what_a_direct_computation_gives(evaluated):
    result, data, _ = evaluated
    clips = next(ev.test_chunks(data))
    real = clips["hr_frames"].flatten(0, 1)
    low = degrade_real_frames(real, 64, ev.DEGRADED_SEED).frames
    up = F.interpolate(low, size=HR, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    level = lambda x: ((x + 1) * 127.5).round() / 255  # noqa: E731  (uint8-rounded, in [0, 1])
    psnr = 10 * torch.log10(1 / (level(up) - level(real)).square().mean(dim=(1, 2, 3)))
    rows = result["sets"]["degraded"]["rows"]
    for index, key in enumerate(clips["key"]):
        expected = float(psnr[index * FRAMES:(index + 1) * FRAMES].mean())
        assert rows["bicubic"]["per_clip"][key]["psnr"] == pytest.approx(expected, abs=1e-3)
    stage2 = result["sets"]["stage2"]["rows"]["bicubic"]["per_clip"]
    assert all(stage2[k]["psnr"] != rows["bicubic"]["per_clip"][k]["psnr"] for k in clips["key"])  # other inputs
    assert len(result["speakers"]) == CLIPS and result["frames"] == CLIPS * FRAMES


def test_identical_rows_score_identically_and_every_row_has_its_metrics(evaluated):
    result, _, _ = evaluated
    assert result["primary"] == ["bicubic", "renderer_w0.5"] and result["motion_renderer"] == "windowed"
    for test_set in ev.TEST_SETS:
        scores = result["sets"][test_set]
        rows = scores["rows"]
        assert list(rows) == ["bicubic", "back_projected", "back_projected_area", "renderer_w0", "renderer_w0.5",
                              "renderer_w1", "temporal"]
        same, default = rows["temporal"], rows["renderer_w0.5"]  # the temporal slot holds the same file
        assert same["per_clip"] == default["per_clip"] and same["kid"] == default["kid"]
        assert scores["kid_draws"]["temporal-bicubic"] == scores["kid_draws"]["renderer_w0.5-bicubic"]
        assert rows["renderer_w0"]["per_clip"] != default["per_clip"]  # the fidelity weight matters
        assert {row for row, v in rows.items() if "fid" in v} == {"bicubic", "renderer_w0.5"}
        assert rows["bicubic"]["fid_frames"] == CLIPS * FRAMES and default["kid_frames"] == CLIPS * FRAMES // ev.STRIDE
        for row, values in rows.items():
            assert values["kid"]["kid_std"] > 0 and values["kid"]["subset_size"] == 4
            assert np.isfinite([values[m] for m in ("psnr", "ssim", "identity_dlib", "identity_conre")]).all()
            opening = values["gate_opening"]
            assert opening is None if row in ev.BASE_ROWS else opening == pytest.approx(0.25)  # untrained gate
            assert values["detail"] is None  # no residual head
    degraded = result["sets"]["degraded"]["rows"]  # the real faces, degraded: the untrained codes alone lose them
    assert degraded["bicubic"]["psnr"] > degraded["renderer_w0"]["psnr"] + 3


def test_the_degraded_set_is_recorded_and_the_picture_and_table_are_made(evaluated):
    result, data, root = evaluated
    clips = next(ev.test_chunks(data))
    again = degrade_real_frames(clips["hr_frames"].flatten(0, 1), 64, ev.DEGRADED_SEED)
    recorded = result["degraded"]
    assert recorded["seed"] == ev.DEGRADED_SEED and recorded["recipes"] == again.recipes
    assert recorded["digests"] == [again.digest()] and recorded["beyond_training"]["any"] > 0
    assert Image.open(root / "strip.png").size == (4 * HR, CLIPS * HR)  # input, bicubic, renderer, real
    assert result["training"]["perceptual_network"] == "feature_matching"
    per_seed = [{"seed": 0, **result}]
    table = "\n".join(results_codebook.set_table(per_seed, "stage2") + results_codebook.target_lines(per_seed))
    for label in ("bicubic", "renderer, w = 0.5 (default)", "temporal variant", "area operator", "KID×10³"):
        assert label in table, label


def test_the_residual_heads_detail_is_measured_where_the_gate_is_absent(tmp_path):
    torch.manual_seed(0)
    paths = {}
    for name, head in (("gate", {"detail_gate": True}), ("residual", {"residual_head": True})):
        cfg = CodebookConfig(base_channels=4, channel_multipliers=[1, 2, 2], blocks_per_level=1, lr_base_channels=8,
                             lr_channel_multipliers=[1, 2], codebook_size=16, code_dim=8, transformer_layers=1,
                             transformer_width=32, transformer_heads=4, phase="render", **head)
        module = CodebookStage(cfg, DataConfig(resolution=16, hr_resolution=32), load_earlier=False)
        if module.residual_head is not None:
            torch.nn.init.constant_(module.residual_head.net[-1].bias, 0.1)  # |detail| = 0.1 at every pixel
        paths[name] = tmp_path / name / "codebook.safetensors"
        paths[name].parent.mkdir()
        save_stage_file(paths[name], StageFile(stage="codebook", state=module.state_dict(), config=asdict(module.cfg),
                                               phase="render"))
    renderers = ev.Renderers(paths["gate"], paths["residual"])
    low = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    _, gated = renderers.render(renderers.codebook, low, 0.5)
    _, residual = renderers.render(renderers.temporal, low, 0.5)
    assert set(gated) == {"gate_opening"} and gated["gate_opening"] == pytest.approx(0.25)
    assert set(residual) == {"detail"} and residual["detail"] == pytest.approx(0.1)


def test_the_val_reading_reads_val_clips_with_fid_on_every_row_and_leaves_the_picture(evaluated):
    _, data, root = evaluated
    picture = (root / "strip.png").stat().st_mtime_ns
    reading = codebook_val.reading(CLIPS, (0.0, 1.0))
    result = ev.evaluate_codebook(root / "stages", None, root / "judge" / "conre.safetensors", data, seed=0,
                                  extractor=PixelFeatures(), feature_cache=root / "features", reading=reading)
    val_keys = [k for chunk in ev.test_chunks(data, reading) for k in chunk["key"]]
    test_keys = [k for chunk in ev.test_chunks(data) for k in chunk["key"]]
    assert sorted(result["speakers"]) == sorted(val_keys) and not set(val_keys) & set(test_keys)
    for scores in result["sets"].values():
        rows = scores["rows"]
        assert list(rows) == ["bicubic", "back_projected", "back_projected_area", "renderer_w0", "renderer_w0.5",
                              "renderer_w1"]  # the default (0.5) added, no temporal row
        assert all(values["fid_frames"] == CLIPS * FRAMES for values in rows.values())
    assert (root / "strip.png").stat().st_mtime_ns == picture  # the README's picture is the table's alone
    readings = codebook_val.summary(result)
    lines = codebook_val.table("stage2", readings["stage2"])
    assert len(lines) == 2 + 6 and lines[2].startswith("| bicubic |")
    assert readings["degraded"]["bicubic"]["psnr"] == result["sets"]["degraded"]["rows"]["bicubic"]["psnr"]
    with pytest.raises(ValueError, match="val or test"):
        ev.Reading(split="train")


def test_an_evaluation_stopped_after_a_chunk_resumes_there_and_gives_the_unstopped_result(evaluated, monkeypatch):
    _, data, root = evaluated
    monkeypatch.setattr(ev, "CLIPS_PER_CHUNK", CLIPS // 2)  # two chunks
    args = (root / "stages", root / "stages", root / "judge" / "conre.safetensors", data)
    options = {"seed": 1, "extractor": PixelFeatures(), "feature_cache": root / "features"}
    whole = ev.evaluate_codebook(*args, **options)
    path, key = root / "eval.progress.pt", {"code": "this"}
    with pytest.raises(Stopped):
        ev.evaluate_codebook(*args, **options, progress=StopsAfter(path, key, 1))
    chunks, real_frames = [], ev.real_frames
    monkeypatch.setattr(ev, "real_frames",
                        lambda clips, *rest: chunks.append(clips["key"]) or real_frames(clips, *rest))
    resumed = ev.evaluate_codebook(*args, **options, progress=ChunkProgress(path, key))
    assert len(chunks) == 1 and len(resumed["degraded"]["digests"]) == 2  # the first chunk is not done again
    assert json.dumps(resumed, sort_keys=True) == json.dumps(whole, sort_keys=True)


def test_row_labels_name_the_detail_scale_where_the_residual_head_adds_detail():
    per_seed = [{"training": {"fidelity_weight": 1.0, "detail_scale": 0.4, "temporal_window": 4},
                 "rows": ["bicubic", "renderer_w0", "renderer_w0.5", "renderer_w1", "renderer_s1"]}]
    names = results_codebook.labels(per_seed)
    assert names["renderer_w1"] == "renderer, w = 1, detail × 0.4 (default)"
    assert names["renderer_w0.5"] == "renderer, w = 0.5, detail × 0.4"
    assert names["renderer_w0"] == "renderer, w = 0"  # the codes alone: no detail to scale
    assert names["renderer_s1"] == "renderer, w = 1, detail × 1"
    assert names["temporal"] == "temporal variant (window 4, w = 1, detail × 0.4)"  # trained with the same words
    per_seed[0]["training"].pop("detail_scale")  # evaluations from before the option: all of the detail
    assert results_codebook.labels(per_seed)["renderer_w1"] == "renderer, w = 1 (default)"
    assert results_codebook.labels(per_seed)["temporal"] == "temporal variant (window 4, w = 1)"
