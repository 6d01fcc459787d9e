"""What a killed checkpoint write leaves is removed when the run starts again; a bad requeue signal is refused when
the config is read, not when SLURM starts the job."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import ConfigError, compose
from trainer.factory import build_run

REPO = Path(__file__).resolve().parents[2]
WRITER = "import sys, torch; from trainer.checkpoints import AtomicCheckpointIO; " \
         "AtomicCheckpointIO().save_checkpoint({'w': torch.zeros(100_000)}, sys.argv[1])"


def killed_mid_write(path: Path) -> Path:
    """Start a checkpoint write of ``path``, SIGKILL the writer before its rename; the temporary file it left."""
    env = {**os.environ, "SEESPEAKER_CHECKPOINT_WRITE_PAUSE_S": "60", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and not list(path.parent.glob(f".*.{proc.pid}.tmp.ckpt")):
        time.sleep(0.2)
    time.sleep(0.5)  # written and synced: the writer now waits before its rename
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = path.parent.glob(f".*.{proc.pid}.tmp.ckpt")
    return left


def test_a_run_start_removes_temporaries_of_dead_writers_only(synthetic_corpus, tmp_path):
    cfg = compose(["experiment=tiny", "stage=conre", f"data.root={synthetic_corpus}", "tracking=disabled",
                   f"experiment.output_root={tmp_path}"])
    checkpoints = Path(cfg.run.dir) / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale = killed_mid_write(checkpoints / "step=50.ckpt")
    assert stale.stat().st_size > 100_000 and not (checkpoints / "step=50.ckpt").exists()
    live = checkpoints / f".step=60.{os.getpid()}.tmp.ckpt"  # a writer that is still running
    live.write_bytes(b"partial")
    build_run(cfg)
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("value", ["USR3", "SIGKILL", "usr 2"])
def test_a_bad_requeue_signal_is_refused_naming_the_key_and_the_signals(value):
    with pytest.raises(ConfigError) as error:
        compose(["experiment=tiny", "stage=conre", f"trainer.requeue_signal={value}"])
    assert f"trainer.requeue_signal={value!r}" in str(error.value) and "USR1" in str(error.value)
    assert "USR2" in str(error.value) and "KILL" not in str(error.value).split("one of")[1]


def test_the_cli_says_so_without_a_traceback(capsys):
    assert main(["train", "experiment=tiny", "stage=conre", "trainer.requeue_signal=USR9"]) == 2
    assert "trainer.requeue_signal='USR9'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["USR1", "SIGUSR2", "term", "XCPU"])
def test_signal_names_slurm_sends_are_accepted(value):
    assert compose(["experiment=tiny", "stage=conre", f"trainer.requeue_signal={value}"]).trainer.requeue_signal
