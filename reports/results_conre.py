"""The ConRe table: speech-to-face retrieval of held-out speakers by the small ConRe over 3 seeds, against chance
and the ideal reader's ceiling, each mean with its interval over test speakers."""
from __future__ import annotations

import statistics

from reports import plan


def conre_seed(seed: int) -> dict:
    """One seed's ConRe, trained (or reused), and its retrieval on the test and training speakers (cached)."""
    from dataclasses import asdict

    from evaluation.conre_eval import conre_retrieval
    from reports.results import CORPUS, SMALL, cached_evaluation, train
    from trainer.config import compose

    stages = SMALL.stages(seed)
    train("conre", seed, stages)
    data = compose(["experiment=small", "stage=conre", f"data.root={CORPUS}"]).data
    path = stages / "conre.safetensors"
    scores = cached_evaluation("conre", seed, [path], lambda: {
        split: asdict(conre_retrieval(str(path), data, split)) for split in ("test", "train")})
    return {"seed": seed, **scores}


def conre_results() -> tuple[dict, str]:
    """Speech-to-face retrieval of held-out (test) speakers by the small ConRe, 3 seeds, against chance."""
    from datamodules.synthetic import ideal_retrieval
    from evaluation.intervals import format_seeds_and_interval, seed_mean_by_clip, speaker_bootstrap
    from reports.results import SEEDS, SMALL, mean_spread

    per_seed = plan.every_seed(conre_seed, SEEDS)
    test = [r["test"] for r in per_seed]
    speaker_of = {key: clip["speaker"] for key, clip in test[0]["per_clip"].items()}

    def cell(metric: str) -> str:
        by_clip = seed_mean_by_clip([{k: c[metric] for k, c in r["per_clip"].items()} for r in test])
        return format_seeds_and_interval([r[metric] for r in test], speaker_bootstrap(by_clip, speaker_of))

    chance1, chance5, speakers = test[0]["chance_top1"], test[0]["chance_top5"], test[0]["speakers"]
    ideal1, ideal5 = ideal_retrieval(speakers, voice_share=SMALL.voice_share())
    top1, top5 = [r["top1"] for r in test], [r["top5"] for r in test]
    lines = [
        f"ConRe speech-to-face retrieval among {speakers} held-out speakers "
        f"(small scale, seeds {', '.join(map(str, SEEDS))}; mean ± std over seeds [95% interval over test speakers]).",
        "",
        "| | top-1 | top-5 |",
        "|---|---|---|",
        f"| ConRe (small) | {cell('top1')} | {cell('top5')} |",
        f"| chance | {chance1:.3f} | {chance5:.3f} |",
        f"| ratio to chance | {statistics.mean(top1) / chance1:.2f}x | {statistics.mean(top5) / chance5:.2f}x |",
        f"| ideal reader (ceiling) | {ideal1:.3f} | {ideal5:.3f} |",
        "",
        "Ideal reader: knows each voice's two face-related latents exactly and reads the face attributes without "
        "error (`datamodules.synthetic.ideal_retrieval`); no encoder pair can do better on this corpus.",
        "",
        f"Training speakers (fit, among {per_seed[0]['train']['speakers']}): top-1 "
        f"{mean_spread([r['train']['top1'] for r in per_seed])} (chance {per_seed[0]['train']['chance_top1']:.4f}).",
    ]
    return {"per_seed": per_seed, "ideal_reader": {"top1": ideal1, "top5": ideal5}}, "\n".join(lines)

