"""The words of ``run.resume``, read alike by a run (``trainer.factory.resolve_resume``) and by the sbatch script that
restarts it (``slurm.render.restart_resume_word``)."""
from __future__ import annotations

OFF_WORDS = ("false", "none", "0", "")
AUTO_WORDS = ("auto", "true")


def resume_parts(value: str) -> tuple[str, str]:
    """``("off", "")`` (start fresh), ``("auto", fallback)`` (the run's own newest checkpoint, else ``fallback``, a
    path or ``""`` for fresh) or ``("path", path)``. Words are case-blind; a YAML ``true`` means ``auto``."""
    word = str(value).strip()
    if word.lower() in OFF_WORDS:
        return "off", ""
    if word.lower() in AUTO_WORDS:
        return "auto", ""
    if word.startswith("auto:"):
        return "auto", word[len("auto:"):]
    return "path", word
