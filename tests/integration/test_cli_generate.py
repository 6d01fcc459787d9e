"""`seespeaker generate` over a video the user already has: the new one replaces it only when complete, and says so."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf

from tests.integration.tiny_stages import make_generation_stages
from trainer.cli import main

FAST = ["--steps", "2", "--motion-steps", "1", "--frame-steps", "1", "--no-codebook"]


def test_an_existing_video_is_replaced_when_the_new_one_is_complete_and_the_user_is_told(tmp_path: Path, capsys):
    stages = make_generation_stages(tmp_path / "tiny" / "stages")
    t = np.arange(int(0.8 * 16000)) / 16000
    sf.write(audio := tmp_path / "speech.wav", (0.3 * np.sin(2 * np.pi * 170 * t)).astype(np.float32), 16000)
    out = tmp_path / "talk.mp4"
    out.write_bytes(b"an earlier video")
    assert main(["generate", "--audio", str(audio), "--stages", str(stages), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"{out} exists: it is replaced when the new file is complete" in printed
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == int(0.8 * 25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav", "talk.mp4", "tiny"]  # no temporary file
