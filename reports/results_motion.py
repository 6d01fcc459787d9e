"""The motion encoder table: how well each motion group's latent reconstructs its own landmarks (and the gaze) on
held-out clips of the small corpus, with the affine face frame from rigid points only.

The encoder is the motion stage's :class:`~lightning_modules.nets.motion.MotionEncoder` at the small config's group
sizes, fitted with its reconstruction loss alone (the stage trains it jointly with the motion transformer and the
frame UNet; here it is fitted apart, so that the table isolates what the groups can hold). Errors are in face-frame
units (the eye line spans 1) and as the fraction of each group's variance over the test frames left unexplained.
"""
from __future__ import annotations

import statistics
from functools import partial

import numpy as np
import torch

from reports import plan

FIT_STEPS = 3000
BATCH_FRAMES = 512
LR = 1e-3
PARTS = ("lips", "jaw", "brows", "eyes", "gaze", "pose")
CHOSEN_GROUPS = ("jaw", "eyes", "pose")  # their size in the small config is chosen on val by this table


def read_split(root, split: str, resolution: int) -> dict:
    """Landmarks [N, T, 68, 2] (pixels of a ``resolution`` frame), gaze [N, T, 2], its mask [N] and the clip keys
    and speakers of one split, read from the shards without decoding a frame."""
    import webdataset as wds

    from datamodules.sample import MOTION_TRUTH_COLUMNS, decode_landmarks, decode_meta, decode_motion_truth
    from datamodules.shards import ShardIndex

    gaze_columns = [MOTION_TRUTH_COLUMNS.index(name) for name in ("gaze_x", "gaze_y")]
    out = {"landmarks": [], "gaze": [], "known": [], "keys": [], "speakers": []}
    for sample in wds.WebDataset(ShardIndex.load(root).shard_paths(root, split), shardshuffle=False):
        meta = decode_meta(sample)
        truth = decode_motion_truth(sample, meta.num_frames)
        out["landmarks"].append(decode_landmarks(sample, meta.num_frames) * (resolution / meta.resolution))
        out["gaze"].append(truth[:, gaze_columns] if truth is not None else np.zeros((meta.num_frames, 2), np.float32))
        out["known"].append(truth is not None)
        out["keys"].append(str(sample["__key__"]))
        out["speakers"].append(meta.speaker)
    return {"landmarks": torch.from_numpy(np.stack(out["landmarks"])).float(),
            "gaze": torch.from_numpy(np.stack(out["gaze"])).float(), "known": torch.tensor(out["known"]),
            "keys": out["keys"], "speakers": out["speakers"]}


def fit_encoder(train: dict, dims: dict[str, int], hidden: int, resolution: int, seed: int):
    """The motion encoder fitted to the training frames by its reconstruction loss (Adam, FIT_STEPS steps)."""
    from lightning_modules.nets.motion import MotionEncoder

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: one thread is fastest, and with others it does not oversubscribe
    try:
        return fitted(MotionEncoder(dims, hidden), train, resolution, seed)
    finally:
        torch.set_num_threads(threads)


def fitted(encoder, train: dict, resolution: int, seed: int):
    """``encoder`` after FIT_STEPS Adam steps on random batches of the training frames."""
    optimizer = torch.optim.Adam(encoder.parameters(), lr=LR)
    marks, gaze = train["landmarks"].flatten(0, 1), train["gaze"].flatten(0, 1)
    known = train["known"][:, None].expand(-1, train["landmarks"].shape[1]).flatten()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(FIT_STEPS):
        index = torch.randint(0, len(marks), (BATCH_FRAMES,), generator=generator)
        latent = encoder(marks[index], resolution, gaze[index], known[index])
        loss = encoder.reconstruction_error(latent, marks[index], resolution, gaze[index], known[index]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return encoder.eval()


def part_errors(encoder, data: dict, resolution: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(squared error [N, T] per part, the part's targets [N, T, n]): the eyes group split into its lids and gaze."""
    from lightning_modules.nets.face_frame import EYE_POINTS, group_inputs

    marks, gaze = data["landmarks"], data["gaze"]
    known = data["known"][:, None].expand(-1, marks.shape[1])
    with torch.no_grad():
        decoded = encoder.decode(encoder(marks, resolution, gaze, known))
    targets = group_inputs(marks, resolution, gaze, known)
    split = {"eyes": slice(0, EYE_POINTS), "gaze": slice(EYE_POINTS, EYE_POINTS + 2)}
    errors, wanted = {}, {}
    for part in PARTS:
        group = "eyes" if part in split else part
        cut = split.get(part, slice(None))
        wanted[part] = targets[group][..., cut]
        errors[part] = (decoded[group][..., cut] - wanted[part]).square().mean(-1)
    return errors, wanted


def mouth_leak(encoder, data: dict, resolution: int) -> float:
    """The largest change of the brows, eyes and pose latents when every test frame's lips and jaw are replaced by
    those of its clip's most closed frame (the rigid frame makes it zero up to rounding)."""
    marks = data["landmarks"]
    gap = marks[..., 66, 1] - marks[..., 62, 1]
    closed = marks[torch.arange(len(marks)), gap.argmin(1)]                               # [N, 68, 2]
    moved = marks.clone()
    moved[..., 48:68, :] = closed[:, None, 48:68]
    moved[..., 0:17, :] = closed[:, None, 0:17]
    with torch.no_grad():
        before, after = encoder.groups(encoder(marks, resolution)), encoder.groups(encoder(moved, resolution))
    return max(float((before[g] - after[g]).abs().max()) for g in ("brows", "eyes", "pose"))


def split_scores(encoder, data: dict, resolution: int) -> dict:
    """Per-clip error of each part, and each part's variance over the split's frames."""
    errors, targets = part_errors(encoder, data, resolution)
    return {"per_clip": {key: {part: float(errors[part][i].mean()) for part in PARTS}
                         for i, key in enumerate(data["keys"])},
            "variance": {part: float(t.flatten(0, 1).var(0).mean()) for part, t in targets.items()}}


def evaluate_seed(seed: int) -> dict:
    """One seed: an encoder at the small config's group sizes with 4 and with 8 latent dimensions for each of
    :data:`CHOSEN_GROUPS`, fitted on train, scored on val (where the small config's sizes are chosen) and test."""
    from reports.results import CORPUS
    from trainer.config import compose

    cfg = compose(["experiment=small", "stage=motion_diffusion", f"data.root={CORPUS}"])
    resolution = cfg.data.resolution
    splits = {name: read_split(CORPUS, name, resolution) for name in ("train", "val", "test")}
    sizes = {f"{n} per jaw/eyes/pose": {**cfg.stage.group_dims(), **dict.fromkeys(CHOSEN_GROUPS, n)} for n in (4, 8)}
    out = {"speakers": {split: dict(zip(d["keys"], d["speakers"], strict=True)) for split, d in splits.items()},
           "train_clips": len(splits["train"]["keys"]), "resolution": resolution, "variants": {}}
    for variant, dims in sizes.items():
        encoder = fit_encoder(splits["train"], dims, cfg.stage.encoder_hidden, resolution, seed)
        out["variants"][variant] = {"group_dims": dims, "leak": mouth_leak(encoder, splits["test"], resolution),
                                    **{split: split_scores(encoder, splits[split], resolution)
                                       for split in ("val", "test")}}
    return out


def part_cell(per_seed: list[dict], variant: str, split: str, part: str) -> tuple[str, float]:
    """("error x 1e-3 ± seeds [speaker interval]", unexplained share of the part's variance) of one variant."""
    from evaluation.intervals import format_seeds_and_interval, seed_mean_by_clip, speaker_bootstrap

    scores = [r["variants"][variant][split] for r in per_seed]
    values = [{k: c[part] for k, c in s["per_clip"].items()} for s in scores]
    means = [statistics.mean(v.values()) for v in values]
    mean, low, high = speaker_bootstrap(seed_mean_by_clip(values), per_seed[0]["speakers"][split])
    unexplained = statistics.mean(m / s["variance"][part] for m, s in zip(means, scores, strict=True))
    return format_seeds_and_interval([m * 1e3 for m in means], (mean * 1e3, low * 1e3, high * 1e3)), unexplained


def chosen_note(per_seed: list[dict], variants: list[str]) -> str:
    """What the val split says of each variant: the range of the unexplained share of the chosen groups' parts."""
    parts = ("jaw", "eyes", "gaze", "pose")
    spans = []
    for variant in variants:
        shares = [part_cell(per_seed, variant, "val", part)[1] for part in parts]
        spans.append(f"{variant} leaves {min(shares):.3f}-{max(shares):.3f} of their variance unexplained")
    return ", ".join(spans)


def motion_encoder_results() -> tuple[dict, str]:
    """Per-part reconstruction error of the motion encoder on the small corpus's test clips, 3 seeds, with 4 and 8
    dimensions for the jaw, eyes and pose groups."""
    from reports.results import CORPUS, SEEDS, cached_evaluation

    index = CORPUS / "index.json"
    per_seed = plan.every_seed(lambda seed: cached_evaluation("motion_encoder", seed, [index],
                                                                 partial(evaluate_seed, seed)), SEEDS)
    variants = list(per_seed[0]["variants"])
    rows = []
    for part in PARTS:
        cells = [part_cell(per_seed, v, "test", part) for v in variants]
        val = [part_cell(per_seed, v, "val", part)[1] for v in variants]
        rows.append(f"| {part} | " + " | ".join(f"{error} | {share:.3f}" for error, share in cells)
                    + " | " + " / ".join(f"{v:.3f}" for v in val) + " |")
    first = per_seed[0]
    sizes = "; ".join(f"{v}: {first['variants'][v]['group_dims']}" for v in variants)
    leak = max(r["variants"][v]["leak"] for r in per_seed for v in variants)
    lines = [
        f"Motion encoder reconstruction on the {len(first['speakers']['test'])} test clips of the small corpus "
        f"(version 2; {first['train_clips']} training clips, {first['resolution']} px landmarks; fitted "
        f"{FIT_STEPS} steps of {BATCH_FRAMES} frames by its reconstruction loss alone; seeds "
        f"{', '.join(map(str, SEEDS))}; mean ± std over seeds [95% interval over test speakers]). Group sizes: "
        f"{sizes}. The small config gives each of the jaw, eyes and pose groups 8 dimensions, chosen by the val "
        f"column: {chosen_note(per_seed, variants)}.",
        "",
        "| part | " + " | ".join(f"{v}: squared error x 1e-3 | unexplained" for v in variants)
        + " | val unexplained (" + " / ".join(variants) + ") |",
        "|---|" + "---|---|" * len(variants) + "---|",
        *rows,
        "",
        "Squared error in the affine face frame (nose bridge and eye corners; the eye line spans 1); unexplained: "
        "the error over the part's variance across the split's frames. Parts: eyes are the lids, gaze the eyes "
        "group's gaze input (in face-frame units: a full gaze is 0.1; known on every clip of this corpus), pose the "
        "nose points and the frame itself. Leak check: replacing every test frame's lips and jaw by those of its "
        f"clip's most closed frame changes the brows, eyes and pose latents by at most {leak:.1e} (the frame comes "
        "from rigid points only).",
    ]
    return {"seeds": per_seed}, "\n".join(lines)
