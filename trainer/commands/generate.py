"""``seespeaker generate``: speech file -> talking-face mp4 with every exported stage."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from common.errors import SeespeakerError, UserError
from trainer.cli import add_command
from trainer.commands import check_output, replacing, resolve_device

STEPS = ("portrait", "motion latents", "frame latents", "decoded frames", "lip enhancement", "codebook rendering",
         "mp4")


def generate(args: argparse.Namespace) -> int:
    """Generate a talking-face video from speech alone.

    Example:
      seespeaker generate --audio speech.wav --stages outputs/tiny/stages --out out.mp4
      seespeaker generate --audio speech.wav --portrait face.png --stages outputs/tiny/stages --out out.mp4
    Reads any audio PyAV decodes (wav, flac, mp3, m4a; any rate and channel count; resampled to 16 kHz mono)
    and the exported stage files in --stages (conre, autoencoder, portrait_diffusion, saw, motion_diffusion,
    syncnet, lip_enhancer, codebook). Writes an H.264 mp4 at 25 fps with the speech muxed in, one frame per
    40 ms of speech; the file appears only when generation succeeded (replacing an earlier one, which is said at
    the start; --out may not be a folder or an input). --portrait-only writes the portrait
    (PNG) alone; --save-portrait also keeps it next to the video. --portrait animates a given face (a square
    image, read as RGB and resized with antialiased bicubic to the size the motion stage trained at) instead of
    generating one; the portrait stage files (portrait_diffusion, saw, face prior) are then not needed.
    """
    from generation.pipeline import GenerationOptions, generate_video

    logging.basicConfig(level=logging.INFO, format="[seespeaker] %(message)s")
    device = resolve_device("--device", args.device)
    check_flags(args)
    for path in check_outputs(args):
        print(replacing(path))
    options = GenerationOptions(steps=args.steps, guidance=args.guidance, motion_steps=args.motion_steps,
                                frame_steps=args.frame_steps, fidelity=args.fidelity, resolution=args.resolution,
                                seed=args.seed, device=device, batch_frames=args.batch_frames,
                                precision=args.precision,
                                use_saw=not args.no_saw, prior_weight=args.prior_weight,
                                codebook=not args.no_codebook)
    try:
        with progress_bar(1 if args.portrait_only else len(STEPS)) as advance:
            result = generate_video(args.audio, args.stages, args.out, options, args.portrait_only,
                                    args.save_portrait, progress=advance, portrait=args.portrait)
    except (SeespeakerError, ValueError) as exc:
        raise UserError(str(exc)) from None
    made = result.video or result.portrait
    print(f"[seespeaker] wrote {made} ({result.frames} frames, {result.size} px) in {result.seconds:.1f} s")
    print("[seespeaker] step times (s): " + json.dumps({k: round(v, 2) for k, v in result.timings.items()}))
    return 0


def check_flags(args: argparse.Namespace) -> None:
    """Each number out of its range, and each pair of flags that contradict each other, is an error naming them."""
    for flag, value, least in (("--steps", args.steps, 1), ("--motion-steps", args.motion_steps, 0),
                               ("--frame-steps", args.frame_steps, 0), ("--batch-frames", args.batch_frames, 1),
                               ("--resolution", args.resolution, 0)):
        if value < least:
            default = " (0: the stage's own)" if least == 0 else ""
            raise UserError(f"{flag} {value}: must be at least {least}{default}")
    if args.fidelity is not None and not 0.0 <= args.fidelity <= 1.0:
        raise UserError(f"--fidelity {args.fidelity}: w must be in [0, 1] (0: the codes alone, 1: closest to the "
                        f"decoded frames)")
    if args.prior_weight is not None and not 0.0 <= args.prior_weight <= 1.0:
        raise UserError(f"--prior-weight {args.prior_weight}: the prior weight a must be in [0, 1] (0: the raw "
                        f"sample, 1: the mean face)")
    if args.portrait is not None and (args.no_saw or args.prior_weight is not None):
        flag = "--no-saw" if args.no_saw else "--prior-weight"
        raise UserError(f"{flag} shapes a portrait generated from the speech, but --portrait {args.portrait} gives "
                        f"the face to animate: drop {flag} or --portrait")
    if not Path(args.stages).is_dir():
        raise UserError(f"--stages {args.stages} is not a folder; give the folder of exported stage files (each "
                        f"training run exports into its run.stages_dir, e.g. outputs/tiny/stages)")


def check_outputs(args: argparse.Namespace) -> list[Path]:
    """The files this run writes that exist already; an output that is a folder or one of the inputs, or whose
    suffix is not that of what is written there, is an error."""
    inputs = {"--audio": args.audio, "--portrait": args.portrait}
    outputs = [("--save-portrait", args.save_portrait, "portrait.png")]
    if not args.portrait_only:
        outputs.append(("--out", args.out, "talk.mp4"))
    elif not args.save_portrait:  # the portrait goes to <out>.png
        outputs.append(("--out", Path(args.out).with_suffix(".png"), "portrait.png"))
    existing = [Path(path) for flag, path, example in outputs if path and check_output(flag, path, example, inputs)]
    if args.save_portrait and Path(args.save_portrait).suffix.lower() != ".png":
        raise UserError(f"--save-portrait {args.save_portrait}: the portrait is written as a PNG; give a .png path")
    if not args.portrait_only and Path(args.out).suffix.lower() != ".mp4":
        raise UserError(f"--out {args.out}: the video is written as an H.264 mp4; give a .mp4 path (or add "
                        f"--portrait-only to write the portrait PNG alone)")
    return existing


class progress_bar:
    """A rich progress bar over the pipeline's steps; the callable it gives advances one named step."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), transient=False)
        self.total = total

    def __enter__(self):
        self.progress.start()
        task = self.progress.add_task("generating", total=self.total)

        def advance(name: str) -> None:
            self.progress.update(task, advance=1, description=f"done: {name}")
        return advance

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def register(subparsers) -> None:
    parser = add_command(subparsers, "generate", generate)
    parser.add_argument("--audio", required=True, help="speech file (wav, flac, mp3, m4a, any rate / channels)")
    parser.add_argument("--stages", required=True, help="folder of exported stage files (e.g. outputs/tiny/stages)")
    parser.add_argument("--out", required=True,
                        help="output mp4 (or the portrait PNG's base name with --portrait-only)")
    parser.add_argument("--resolution", type=int, default=0, help="output frame size (default: the codebook's)")
    parser.add_argument("--steps", type=int, default=50, help="portrait sampler steps (default 50)")
    parser.add_argument("--motion-steps", type=int, default=0, help="motion sampler steps (default: the stage's)")
    parser.add_argument("--frame-steps", type=int, default=0,
                        help="frame sampler steps per frame (default: the stage's)")
    parser.add_argument("--guidance", type=float, default=3.0,
                        help="portrait classifier-free guidance scale (default 3.0)")
    parser.add_argument("--fidelity", type=float, default=None, help="codebook renderer fidelity w in [0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    parser.add_argument("--batch-frames", type=int, default=16,
                        help="frames per batch in refinement and rendering (default 16)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on the CPU; fp32; bf16 (autocast on any device)")
    parser.add_argument("--portrait-only", action="store_true", help="write only the portrait (PNG)")
    parser.add_argument("--save-portrait", default=None, help="also write the portrait to this PNG")
    parser.add_argument("--portrait", default=None, metavar="FACE.png",
                        help="animate this face (a square image) instead of generating one from the speech; it is "
                             "resized to the motion stage's training size and the portrait stages are not needed")
    parser.add_argument("--no-saw", action="store_true",
                        help="use the portrait stage's constant prior weight (stage.prior_weight) instead of SAW")
    parser.add_argument("--prior-weight", type=float, default=None, metavar="A",
                        help="fix the prior weight a in [0, 1] for every channel (ablations; no saw file needed): "
                             "portrait = prior + (1 - a) * sample, 0 the raw sample, 1 the mean face")
    parser.add_argument("--no-codebook", action="store_true",
                        help="stop before the codebook renderer: the lip-enhanced frames at the motion stage's size")
