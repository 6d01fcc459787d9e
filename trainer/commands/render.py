"""``seespeaker render``: the codebook renderer alone on a face image or video."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from common.errors import SeespeakerError, UserError
from trainer.cli import add_command
from trainer.commands import check_output, replacing, resolve_device

IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEOS = (".mp4", ".mov", ".mkv", ".avi", ".webm")
CODEFORMER_FIDELITY = 0.5  # CodeFormer's inference default


def render(args: argparse.Namespace) -> int:
    """Render a face image or video at high resolution with the codebook renderer alone.

    Examples:
      seespeaker render --stage codeformer.pth --input face.png --fidelity 0.7 --out restored.png
      seespeaker render --stage outputs/tiny/stages/codebook.safetensors --input clip.mp4 --out clip_hr.mp4
    --stage is an exported codebook stage (codebook.safetensors, phase transformer or render, either layout) or
    CodeFormer's released codeformer.pth ({'params_ema': state_dict}; the network's sizes are read from its
    tensor shapes, with the release's 8 attention heads). The input is a square face crop (PNG / JPEG) or a video
    of them (mp4); it is resized to the renderer's input: the stage's low resolution for a codebook file, 512 px
    (bicubic) for codeformer.pth, with CodeFormer's convention: RGB scaled to [-1, 1], adaptive instance
    normalisation on, output clamped to [-1, 1]. An image gives an image, a video an mp4 with the input's audio
    and frame rate; an existing --out is replaced once the new file is complete (said at the start).

    --fidelity w in [0, 1], by layout:
      codeformer (codeformer.pth, or a codebook file trained with stage.layout=codeformer): CodeFormer's w, the
        weight of the fusion blocks' scale and shift from the input's encoder features; 0 decodes the predicted
        codes alone (the most restoration), 1 stays closest to the input. Default 0.5 for a .pth, the file's
        stage.fidelity_weight for a codebook file.
      compact (a codebook file of stage.layout=compact): the fusion weight and, with stage.consistency, the
        back-projection fraction, so at 1 the output's low frequencies follow the input. Default: the file's
        stage.fidelity_weight; a transformer-phase file always renders at 0.
    --detail-scale s in [0, 1] (a compact-layout file with a residual head): the share of the head's drawn detail
      added to bicubic; below 1 it trades detail for per-pixel fidelity. Default: the file's stage.detail_scale.
    """
    if args.fidelity is not None and not 0.0 <= args.fidelity <= 1.0:
        raise UserError(f"--fidelity {args.fidelity}: w must be in [0, 1] (0: the codes alone, 1: closest to the "
                        f"input)")
    if args.detail_scale is not None and not 0.0 <= args.detail_scale <= 1.0:
        raise UserError(f"--detail-scale {args.detail_scale}: s must be in [0, 1] (0: no drawn detail, 1: all of it)")
    if args.batch_frames < 1:
        raise UserError(f"--batch-frames {args.batch_frames}: must be at least 1")
    source, out = Path(args.input), Path(args.out)
    video = check_paths(Path(args.stage), source, out)
    device = resolve_device("--device", args.device)
    if check_output("--out", out, "restored.png", {"--input": source, "--stage": args.stage}):
        print(replacing(out))
    try:
        upscale, size = load_renderer(Path(args.stage), args.fidelity, device, args.batch_frames, args.detail_scale)
        if video:
            frames = render_video(source, out, upscale, size)
        else:
            frames = render_image(source, out, upscale, size)
    except (SeespeakerError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"[seespeaker] wrote {out} ({frames} frame{'s' * (frames != 1)} from {source})")
    return 0


def check_paths(stage: Path, source: Path, out: Path) -> bool:
    """Whether the input is a video; each path that cannot work is an error naming it and what to do."""
    for path, what in ((stage, "--stage"), (source, "--input")):
        if path.is_dir():
            raise UserError(f"{what} {path} is a folder; give a file (for --stage: the codebook.safetensors in a "
                            f"stages folder, or codeformer.pth)")
        if not path.is_file():
            raise UserError(f"{what} {path} does not exist")
    if stage.suffix not in (".safetensors", ".pth", ".pt"):
        raise UserError(f"--stage {stage}: expected an exported codebook.safetensors (make one from a run with "
                        f"`seespeaker export <run folder>`) or CodeFormer's codeformer.pth")
    check_codebook_file(stage)
    kinds = {s: "an image" for s in IMAGES} | {s: "a video" for s in VIDEOS}
    have = kinds.get(source.suffix.lower())
    if have is None:
        raise UserError(f"--input {source}: expected an image ({', '.join(IMAGES)}) or a video ({', '.join(VIDEOS)})")
    wants = "a video" if out.suffix.lower() == ".mp4" else kinds.get(out.suffix.lower())
    if wants != have or (have == "a video" and out.suffix.lower() != ".mp4"):
        expected = ".mp4" if have == "a video" else "an image suffix (.png, .jpg)"
        raise UserError(f"--out {out}: the input {source} is {have}, so the output needs {expected}")
    return have == "a video"


def check_codebook_file(stage: Path) -> None:
    """A stage file of another stage is an error naming the stage it holds and the file render reads."""
    from lightning_modules.stagefile import read_metadata

    if stage.suffix != ".safetensors":
        return
    try:
        held = read_metadata(stage).get("stage")
    except SeespeakerError as exc:
        raise UserError(f"--stage {exc}") from None
    if held != "codebook":
        raise UserError(f"--stage {stage} holds stage {held!r}; render takes the codebook stage "
                        f"(codebook.safetensors in a stages folder) or CodeFormer's codeformer.pth")


def load_renderer(stage: Path, fidelity: float | None, device: str, batch_frames: int,
                  detail_scale: float | None = None) -> tuple[Callable, int]:
    """(frames [T, 3, s, s] in [-1, 1] -> [T, 3, S, S] in [-1, 1] on the CPU, the input size s it takes)."""
    import torch

    if stage.suffix == ".safetensors":
        from lightning_modules.codebook import CodebookStage
        from lightning_modules.stagefile import StageFiles

        module = CodebookStage.for_inference(StageFiles.of(stage, "codebook")).to(device)
        if detail_scale is not None and module.residual_head is None:
            raise UserError(f"--detail-scale weighs a residual head's detail, and {stage} has none "
                            f"(stage.residual_head=false or the codeformer layout): drop --detail-scale")

        def upscale_stage(frames: torch.Tensor) -> torch.Tensor:
            return module.upscale(frames.to(device), fidelity, batch_frames, detail_scale).clamp(-1, 1).cpu()
        return upscale_stage, module.cfg.lr_resolution

    from lightning_modules.nets.codeformer import load_codeformer

    if detail_scale is not None:
        raise UserError(f"--detail-scale weighs a residual head's detail, which CodeFormer's network ({stage}) has "
                        f"not: drop --detail-scale")
    net = load_codeformer(stage).to(device)
    w = CODEFORMER_FIDELITY if fidelity is None else fidelity

    @torch.no_grad()
    def upscale(frames: torch.Tensor) -> torch.Tensor:
        return torch.cat([net(chunk.to(device), fidelity=w, adain=True).image.clamp(-1, 1).cpu()
                          for chunk in frames.split(batch_frames)])
    return upscale, net.sizes.image_size


def resized(frames, size: int):
    """uint8 frames [T, H, W, 3] -> float [T, 3, size, size] in [-1, 1] (bicubic; antialiased when shrinking)."""
    import torch.nn.functional as F

    from common.images import to_unit

    x = to_unit(frames)
    if x.shape[-2] != x.shape[-1]:
        raise ValueError(f"the input frames are {x.shape[-1]} x {x.shape[-2]} (width x height); the renderer takes "
                         f"square aligned face crops: crop the face to a square first")
    if x.shape[-1] != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=x.shape[-1] > size)
    return x.clamp(-1, 1)


def render_image(source: Path, out: Path, upscale: Callable, size: int) -> int:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from common.images import to_uint8
    from common.media import write_png

    try:
        image = np.array(Image.open(source).convert("RGB"))  # a writable copy for torch
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"--input {source} is not a readable image ({exc})") from None
    result = to_uint8(upscale(resized(image[None], size)))[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        write_png(out, result)
    else:
        from common.files import atomic_path

        with atomic_path(out) as tmp:
            Image.fromarray(result).save(tmp, format=Image.registered_extensions()[out.suffix.lower()])
    return 1


def render_video(source: Path, out: Path, upscale: Callable, size: int, chunk: int = 64) -> int:
    import numpy as np

    from common.images import to_uint8
    from common.media import read_mp4, write_mp4

    try:
        frames, audio, fps, sample_rate = read_mp4(source)
    except Exception as exc:  # PyAV raises its own error types for unreadable files
        raise ValueError(f"--input {source} is not a readable video ({type(exc).__name__}: {exc})") from None
    rate = round(fps) if fps > 0 else 25
    if abs(rate - fps) > 0.01:
        print(f"[seespeaker] {source} runs at {fps:.3f} fps; the output is written at {rate} fps")
    rendered = np.concatenate([to_uint8(upscale(resized(frames[i:i + chunk], size)))
                               for i in range(0, len(frames), chunk)])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(out, rendered, audio if len(audio) else None, fps=rate, sr=sample_rate or 16000)
    return len(rendered)


def register(subparsers) -> None:
    parser = add_command(subparsers, "render", render)
    parser.add_argument("--stage", required=True, help="codebook.safetensors (seespeaker export) or CodeFormer's "
                        "codeformer.pth")
    parser.add_argument("--input", required=True, help="a square face crop (png, jpg) or a video of them (mp4)")
    parser.add_argument("--out", required=True, help="output image (png, jpg) for an image, mp4 for a video")
    parser.add_argument("--fidelity", type=float, default=None, help="w in [0, 1]; its meaning per layout is above "
                        "(default: 0.5 for codeformer.pth, the file's stage.fidelity_weight for a codebook file)")
    parser.add_argument("--detail-scale", type=float, default=None, help="s in [0, 1]: the share of a residual "
                        "head's detail (default: the file's stage.detail_scale)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto: cuda when visible)")
    parser.add_argument("--batch-frames", type=int, default=8, help="frames per forward pass")
