"""The subcommands of ``seespeaker`` (one module each) and the checks they share on devices and output paths."""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError


def resolve_device(flag: str, value: str) -> str:
    """``value`` of ``--device`` as a torch device string (``auto``: cuda when visible); a name torch does not know,
    or a GPU that is not there, is an error naming the flag."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if value == "auto" else value
    try:
        torch.device(device)
    except RuntimeError:
        raise UserError(f"{flag} {value}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{flag} {value}: no CUDA GPU is visible; use {flag} cpu")
    return device


def check_output(flag: str, path: str | Path, example: str,
                 inputs: dict[str, str | Path | None] | None = None) -> bool:
    """Whether the output ``path`` exists already (the caller says it replaces it). A folder, or a file that is also
    one of the ``inputs`` (flag -> path), is an error: writing there would fail or destroy the input."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give the path of the file to write, for example "
                        f"{flag} {path / example}")
    for other_flag, other in (inputs or {}).items():
        if other is not None and path.exists() and Path(other).exists() and path.samefile(other):
            raise UserError(f"{flag} {path} is the file given to {other_flag}: writing it would destroy that input; "
                            f"choose another {flag}")
    return path.exists()


def replacing(path: str | Path) -> str:
    """The line that says an existing file is being replaced."""
    return f"[seespeaker] {path} exists: it is replaced when the new file is complete"
