"""Run a training end to end: build, fit, save the final checkpoint, export the stage file."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from common.errors import SeespeakerError, UserError
from common.files import atomic_write_text
from trainer.checkpoints import CHECKPOINT_DIR
from trainer.config import to_container
from trainer.schemas import Config

RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def rendezvous_environment_kept():
    """Puts ``MASTER_ADDR``/``MASTER_PORT`` back as they were: Lightning writes the address it picked into
    ``os.environ``, and a later training in the same process (a notebook, a test session) would otherwise
    rendezvous on a port that may be taken by then."""
    before = {name: os.environ.get(name) for name in RENDEZVOUS_VARIABLES}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_training(cfg: Config, argv: list[str] | None = None) -> int:
    with rendezvous_environment_kept():
        return _run_training(cfg, argv)


def _run_training(cfg: Config, argv: list[str] | None) -> int:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from trainer.factory import build_run, fit

    run = None
    try:
        run = build_run(cfg, argv)
        run.module.run_config = to_container(cfg)
        fit(run)
    except SeespeakerError:
        _close_wandb()
        raise
    except SIGTERMException:
        _close_wandb(preempted=True)
        return _stopped(cfg, run)
    except RuntimeError as exc:
        _close_wandb()
        if "Error(s) in loading state_dict" in str(exc):
            raise UserError(f"the checkpoint resumed from does not match stage {cfg.stage.name}'s networks "
                            f"({str(exc).splitlines()[1].strip()}); start over with resume=false or use another "
                            f"run.name") from None
        raise
    trainer = run.trainer
    final = Path(cfg.run.dir) / CHECKPOINT_DIR / f"final-step={trainer.global_step}.ckpt"
    trainer.save_checkpoint(str(final), weights_only=False)  # the full state: resume=auto continues from it
    if trainer.is_global_zero:
        _finish(cfg, run, final)
    _end_process_group(trainer)
    return 0


def _end_process_group(trainer, wait: bool = True) -> None:
    """Every rank waits for rank 0's export (``wait``), then the process group is destroyed. A rank that exits with
    the group alive can abort at interpreter shutdown (gloo's worker threads: "terminate called without an active
    exception"), and SLURM then marks the whole job failed. A preempted run does not wait: the other ranks may be
    gone already, and destroying the group needs none of them."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            trainer.strategy.barrier("seespeaker-finished")
        dist.destroy_process_group()


def _finish(cfg: Config, run, final: Path) -> None:
    summary = {"global_step": run.trainer.global_step, "final_checkpoint": str(final), **run.health.summary(),
               "missing_shards": len(run.data.missing_shards)}
    summary.update({k: float(v) for k, v in run.trainer.callback_metrics.items() if v.numel() == 1})
    if cfg.run.export:
        from trainer.export import export_stage

        exported = export_stage(final, stages_dir=cfg.run.stages_dir)
        summary["exported"] = str(exported)
        print(f"[seespeaker] exported {exported}")
        _log_artifact(cfg, run, exported)
    atomic_write_text(Path(cfg.run.dir) / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
    for logger in run.trainer.loggers:
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
            logger.experiment.summary.update({f"data/{k}": v for k, v in run.health.summary().items()})
    _close_wandb()
    print(f"[seespeaker] run folder: {cfg.run.dir} (step {run.trainer.global_step})", flush=True)


def _stopped(cfg: Config, run) -> int:
    """The exit code after a preemption signal: 0 once SLURM requeued the job (a non-zero exit would only make
    srun end the step early), 143 otherwise."""
    from trainer.callbacks import PreemptionCheckpoint

    requeued = run is not None and any(isinstance(cb, PreemptionCheckpoint) and cb.requeued
                                       for cb in run.trainer.callbacks)
    if run is not None:
        _end_process_group(run.trainer, wait=False)
    print(f"[seespeaker] stopped by a signal; the checkpoint is saved in {cfg.run.dir}/checkpoints "
          f"({'the requeued job resumes from it' if requeued else 'resume with resume=auto'})", flush=True)
    return 0 if requeued else 143


def _close_wandb(preempted: bool = False) -> None:
    """Finish this training's W&B run, so that a later training in the same process starts its own.

    A preempted run (marked preempting when its checkpoint was saved) ends with the signal's exit code: W&B shows
    it preempted, not failed."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    if not preempted:
        wandb.finish(exit_code=0 if not sys.exc_info()[0] else 1)
        return
    try:
        wandb.finish(exit_code=143)
    except Exception as exc:  # W&B's own process may be gone: SLURM signals every process of the job
        print(f"[tracking] W&B could not finish the run ({exc}); metrics.jsonl has every value", flush=True)


def _best_checkpoint(run) -> str:
    for callback in run.trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) and callback.best_model_path:
            return callback.best_model_path
    return ""


def _log_artifact(cfg: Config, run, exported: Path) -> None:
    """The exported stage file as a W&B artifact: `latest` (end of training) and `best` (best monitored checkpoint).

    Never checkpoints or DeepSpeed folders: only the exported safetensors files.
    """
    loggers = [lg for lg in run.trainer.loggers if lg.__class__.__name__ == "SeespeakerWandbLogger"]
    if not cfg.tracking.log_artifacts or not loggers:
        return
    import wandb

    from trainer.export import export_stage

    files = {"latest": exported}
    best = _best_checkpoint(run)
    if best:
        files["best"] = export_stage(best, out=Path(cfg.run.dir) / "export" / f"{cfg.stage.name}-best.safetensors")
    for alias, path in files.items():
        artifact = wandb.Artifact(f"{cfg.experiment.name}-{cfg.stage.name}", type="stage",
                                  metadata={"alias": alias, "stage": cfg.stage.name})
        artifact.add_file(str(path), name=f"{cfg.stage.name}.safetensors")
        loggers[0].experiment.log_artifact(artifact, aliases=[alias])
