"""The settings of the small configs that were chosen by looking at a score, per table, with the split each was
chosen on and the val reading that chose it: printed under each table (:func:`choices_note`) and saved with its raw
numbers. A choice belongs on val; one made on another split is printed as such under its table."""
from __future__ import annotations

# the val reading of the motion stage's mouth loss weight (python -m reports.motion_val)
MOUTH_WEIGHT_READING = ("reports/motion_val.py, seed 0, 26 val clips, the motion stage's frames: LSE-C 2.657 at 0, "
                        "2.820 at 2, 2.846 at 8, 2.849 at 16; 16 − 8 +0.003 [-0.022, 0.028], a tie, so 8 stands; "
                        "0 − 8 -0.189 [-0.240, -0.135]; LSE-D falls towards 0 (18.10 at 0, 18.72 at 8): the two "
                        "scores disagree")
MOUTH_WEIGHT = ("motion_diffusion `stage.mouth_loss_weight: 8.0` (configs/experiment/small.yaml), by the scorer's "
                "LSE-C of the motion stage's frames")
MAX_STEPS = ("autoencoder and motion_diffusion `trainer.max_steps: 1500` (configs/experiment/small.yaml), by the "
             "autoencoder's val L1 and dlib face rate and the motion stage's val frame loss at 500-step intervals",
             "val")

# the val reading of the windowed renderer's frame_change loss weight (python -m reports.motion_val --option
# temporal_loss_weight)
TEMPORAL_WEIGHT_READING = ("reports/motion_val.py, seed 0, 26 val clips, each stage's sampled motion and frames: "
                           "temporal consistency ×10³ 1.80 at 0, 1.70 at 1, 1 − 0 -0.10 [-0.15, -0.04]; flicker 3.64 "
                           "and 3.11 (truth 4.52); lips error 1 − 0 0.000 [-0.032, 0.030], lips r -0.010 [-0.044, "
                           "0.025], seam ratio 0.013 [-0.010, 0.035]; 1.68 at 2, 2 − 1 -0.02 [-0.06, 0.01], a tie, "
                           "so 1 stands")
TEMPORAL_WEIGHT = ("motion_diffusion `stage.temporal_loss_weight: 1.0` (configs/experiment/small.yaml), by the "
                   "temporal consistency outside the mouth of the motion stage's frames",
                   "val (" + TEMPORAL_WEIGHT_READING + ")")

# the val reading of the lip enhancer's training inputs (python -m reports.lips_val)
LIPS_SOURCE_READING = ("reports/lips_val.py, seed 0, 26 val clips, what the enhancer adds to the motion stage's frames "
                       "by the scorer's LSE-C: from the generated portrait -1.336 [-1.480, -1.198] trained on degraded "
                       "real frames, +0.018 [0.002, 0.036] on the motion stage's renderings; from the real first "
                       "frame -0.431 [-0.581, -0.286] and +0.037 [0.019, 0.056]; mouth r − shifted from the generated "
                       "portrait -0.160 [-0.201, -0.118] and -0.012 [-0.026, 0.002]")
LIPS_SOURCE = ("lip_enhancer `stage.input_source: motion` (configs/experiment/small.yaml), by the scorer's LSE-C of "
               "the frames it refines, animated from the generated portrait", "val (" + LIPS_SOURCE_READING + ")")

# the val reading of the lip enhancer's sync weight (python -m reports.lips_val --option stage.sync_weight)
LIPS_SYNC_READING = ("reports/lips_val.py, seed 0, 26 val clips, the motion-trained enhancer at sync weight 1.0 "
                     "against 0.3: LSE-C from the generated portrait -0.027 [-0.041, -0.013], LSE-D +0.050 [0.026, "
                     "0.076]; from the real first frame LSE-C +0.024 [0.001, 0.047], LSE-D +0.054 [0.003, 0.104]; the "
                     "expert-free mouth margin unmoved (-0.006 [-0.025, 0.011]), so 0.3 stands; recon_weight 5.0 "
                     "against 1.0: LSE-C +0.011 [-0.003, 0.023], a tie, so 1.0 stands; LSE-D -0.139 [-0.165, "
                     "-0.114]")
LIPS_SYNC = ("lip_enhancer `stage.sync_weight: 0.3`, `stage.recon_weight: 1.0` (the schema defaults, kept), by the "
             "scorer's LSE-C of the frames it refines, animated from the generated portrait",
             "val (" + LIPS_SYNC_READING + ")")

# per table: (what was chosen and by which score, the split it was chosen on)
CHOICES: dict[str, list[tuple[str, str]]] = {
    "motion_encoder": [("motion_diffusion `stage.jaw_dim`, `stage.eyes_dim`, `stage.pose_dim: 8` "
                        "(configs/experiment/small.yaml), by the unexplained share of each group", "val")],
    "sync": [(MOUTH_WEIGHT, "val (" + MOUTH_WEIGHT_READING + ")"), MAX_STEPS, TEMPORAL_WEIGHT, LIPS_SOURCE,
             LIPS_SYNC],
    "video": [(MOUTH_WEIGHT, "val (" + MOUTH_WEIGHT_READING + "); both renderers train with it"), MAX_STEPS,
              TEMPORAL_WEIGHT],
    "e2e": [TEMPORAL_WEIGHT, LIPS_SOURCE, LIPS_SYNC],
    "codebook": [("the VQ autoencoder's linear shortcut (`stage.shortcut`) and the shared VQ phase's 1000 batches "
                  "(reports/results_codebook.py `PHASE_WORDS`), by the val L1 of L1-only VQ runs of 100-500 batches "
                  "with and without the shortcut against bicubic's from 8 px", "val"),
                 ("the residual head (`stage.residual_head`) in place of the detail gate, by PSNR at fidelity 1 on 32 "
                  "val frames", "val"),
                 ("the default fidelity `stage.fidelity_weight: 1.0` and the render phase's perceptual and GAN weights "
                  "(1.0, 0.1 over 0.5, 0.05), by KID, FID and PSNR of seed 0 on 512 frames of each val set through "
                  "this table's measurement path", "val"),
                 ("the residual head's detail scale `stage.detail_scale: 0.4`: the largest of 0.25-1 whose PSNR stays "
                  "within 0.5 dB of bicubic on both val sets (512 frames each, seed 0's renderer), FID and KID below "
                  "bicubic's there", "val"), TEMPORAL_WEIGHT],
    "autoencoder": [("the small config's autoencoder variant (configs/experiment/small.yaml): the highest face rate, "
                     "the mouth landmark error deciding between variants whose face-rate intervals overlap", "val")],
    **{name: [("the *best constant a* and *best guidance* rows' a and guidance scale, by the mean latent error to "
               "the true face (never by a judge)", "val")] for name in ("portrait", "portrait_voice09")},
}


def choices_note(name: str) -> str:
    """The lines under a table that say which of its settings were chosen by a score, and on which split."""
    lines = [f"- {what}: chosen on {split}." for what, split in CHOICES.get(name, [])]
    return "\n\nSettings chosen by a score:\n" + "\n".join(lines) if lines else ""
