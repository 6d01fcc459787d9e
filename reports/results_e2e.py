"""``make results NAMES=e2e``: the whole system from speech alone, over the seeds, against the truth, each contribution
turned off, and the baselines that place its error.

Per seed, every stage of the chain in ``stages-seed<s>`` (the files the other tables train: the autoencoder and prior
shared from seed 0; conre, portrait_diffusion and saw as the portrait table; the lip enhancer's expert (syncnet on
``data.speaker_part=0/2``), motion_diffusion and lip_enhancer as the sync table; the codebook's three phases as the
codebook table), the no-prior portrait stage in ``stages-seed<s>-noprior`` (the portrait table's), and two judges
shared by every seed and trained for nothing but scoring: the sync table's scorer expert (``data.speaker_part=1/2``,
seed 100) and the portrait table's ConRe judge. The evaluation (:mod:`reports.results_e2e_eval`) is cached per seed.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from evaluation.intervals import format_interval, paired_speaker_bootstrap
from evaluation.measure import MEASUREMENT_RESIZE
from reports import plan
from reports.results_e2e_eval import CLIPS, MEASURE_SIZE, PICTURE_SPEAKERS, ROWS, STRIDE, evaluate_e2e
from reports.table_units import clip_values, row_cell

CHAIN = ("conre", "autoencoder", "face_prior", "portrait_diffusion", "saw", "motion_diffusion", "lip_enhancer",
         "codebook")
METRICS = (("lse_c", "LSE-C ↑"), ("lse_d", "LSE-D ↓"), ("mouth_face_rate", "face rate ↑"), ("mouth_r", "mouth r ↑"),
           ("mouth_null", "r, shifted speech"), ("mouth_margin", "r − shifted ↑"), ("mouth_truth_r", "r vs real ↑"),
           ("identity_dlib", "identity dlib ↑"), ("identity_conre", "identity judge ↑"),
           ("temporal_consistency", "temporal cons. ×10³ ↓"))
# (row, what its difference from the full system says), each on the PAIRED metrics
ABLATIONS = (("no_prior", "the face prior"), ("no_saw", "SAW"), ("no_lips", "the lip enhancer"),
             ("no_codebook", "the codebook renderer"))
PAIRED = ("mouth_margin", "lse_c", "identity_conre", "identity_dlib")


def e2e_seed(seed: int) -> dict:
    """One seed's chain trained (or reused) and scored (or reused)."""
    from reports.results import CORPUS, OUTPUT_ROOT, SMALL, cached_evaluation, shared_autoencoder, train, train_codebook
    from reports.results_codebook import PHASE_WORDS
    from reports.results_portrait_table import JUDGE_SEED, judge_file, no_prior_folder
    from trainer.config import compose

    scorer = OUTPUT_ROOT / "small" / "scorer-stages" / "syncnet.safetensors"
    train("syncnet", 100, scorer.parent, "data.speaker_part=1/2", name="scorer")
    judge = judge_file(SMALL)
    train("conre", JUDGE_SEED, judge.parent, "data.speaker_part=1/2", name="judge")
    stages = shared_autoencoder(seed)
    for stage in ("conre", "portrait_diffusion", "saw"):
        train(stage, seed, stages)
    train("syncnet", seed, stages, "data.speaker_part=0/2")
    for stage in ("motion_diffusion", "lip_enhancer"):
        train(stage, seed, stages)
    train_codebook(seed, stages, PHASE_WORDS)
    no_prior = no_prior_folder(SMALL, seed)
    plan.mirror_stage_files(stages, no_prior, ("conre", "autoencoder"))
    train("portrait_diffusion", seed, no_prior, "stage.prior=none", name=f"seed{seed}-noprior")
    data = compose(["experiment=small", "stage=motion_diffusion", f"data.root={CORPUS}"]).data
    inputs = [scorer, judge, no_prior / "portrait_diffusion.safetensors",
              *(stages / f"{name}.safetensors" for name in CHAIN)]
    result = cached_evaluation("e2e", seed, inputs, partial(evaluate_e2e, stages, no_prior, scorer, judge, data, seed),
                               resumable=True)
    return {"seed": seed, **result}


def distance_cell(per_seed: list[dict], row: str, name: str, scale: float = 1.0) -> str:
    values = [r["rows"][row][name] for r in per_seed if name in r["rows"][row]]
    values = [scale * (v["kid"] if isinstance(v, dict) else v) for v in values]
    if not values:
        return "-"
    spread = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
    return f"{np.mean(values):.2f}{spread}"


def paired_line(per_seed: list[dict], row: str, what: str) -> str:
    speakers = per_seed[0]["speakers"]
    parts = []
    for metric in PAIRED:
        full, other = clip_values(per_seed, "full", metric), clip_values(per_seed, row, metric)
        both = full.keys() & other.keys()
        if both:
            interval = paired_speaker_bootstrap({c: full[c] for c in both}, {c: other[c] for c in both}, speakers)
            parts.append(f"{dict(METRICS)[metric]} {format_interval(*interval)}")
    return f"- full − {ROWS[row]} (what {what} adds): " + ", ".join(parts)


def e2e_results() -> tuple[dict, str]:
    """Train (or reuse) the chain over the seeds and tabulate it."""
    from reports.results import SEEDS

    per_seed = plan.every_seed(e2e_seed, SEEDS)
    return {"per_seed": per_seed}, e2e_table(per_seed)


def e2e_table(per_seed: list[dict]) -> str:
    """The README block of the seeds' evaluations."""
    from reports.results import picture
    from reports.results_e2e_eval import IMAGE  # read when the table is made (tests point it elsewhere)
    frames = per_seed[0]["frames_per_clip"]
    lines = [f"The whole system from speech alone: {CLIPS} held-out clips ({frames / 25:g} s, one per test speaker; "
             f"only the speech goes in), {len(per_seed)} seeds, mean ± std over seeds [95% interval over test "
             f"speakers]. Every row is measured at {MEASURE_SIZE} px ({MEASUREMENT_RESIZE}). LSE by the independent "
             f"scorer expert; mouth r: dlib's mouth opening against the speech's loudness at the best lag within 3 "
             f"frames, beside the same against the speech shifted by 1 s or more and their difference "
             f"(`evaluation/mouth_sync.py`), and the opening's r with the real clip's; identity: cosine to the real "
             f"face (dlib on faces it finds, and the independent ConRe judge) on every {STRIDE}th frame; temporal "
             f"consistency outside the mouth. KID×10³ on every {STRIDE}th frame of each row and FID on every frame "
             f"of the full system ({frames * CLIPS} frames), against the real frames (mean ± std over seeds).", "",
             "| videos | " + " | ".join(label for _, label in METRICS) + " | KID×10³ ↓ | FID ↓ |",
             "|---|" + "---|" * (len(METRICS) + 2)]
    for row, name in ROWS.items():
        kid = distance_cell(per_seed, row, "kid", 1e3) if row != "truth" else "-"
        fid = distance_cell(per_seed, row, "fid") if row != "truth" else "-"
        cells = [row_cell(per_seed, row, m) for m, _ in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {kid} | {fid} |")
    lines += ["", "Each contribution against the system without it (full − ablation, mean [paired 95% interval over "
                  "test speakers], on the clips both rows scored):"]
    lines += [paired_line(per_seed, row, what) for row, what in ABLATIONS]
    lines += ["", picture(IMAGE, "e2e", f"real face, generated portrait and frames of the generated video, "
                                        f"{PICTURE_SPEAKERS} test speakers"), "",
              "Per row of the picture, a held-out test speaker (seed 0): the real face, the portrait generated from "
              "the speech alone, and every 8th frame of the generated video. The nearest-voice, mean-face and "
              "real-portrait rows animate a face through the same Stage 2 and codebook, so the gap between the full "
              "system and the real portrait row is Stage 1's share of the error; the other clip's speech row is the "
              "sync floor."]
    return "\n".join(lines)
