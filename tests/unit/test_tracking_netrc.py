"""tracking.mode=auto: only a W&B key (environment or a ~/.netrc entry for the W&B host) means online."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.config import compose
from trainer.tracking import tracking_mode

KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_netrc(home: Path, text: str) -> None:
    path = home / ".netrc"
    path.write_text(text)
    os.chmod(path, 0o600)


def auto_mode() -> str:
    return tracking_mode(compose(["experiment=tiny", "stage=conre", "tracking.mode=auto"]))


def wandb_finds_a_key() -> bool:
    from wandb.sdk.lib.wbauth import read_netrc_auth

    return bool(read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")))


def test_a_netrc_for_other_hosts_runs_offline_and_wandb_starts(home, tmp_path):
    write_netrc(home, "machine github.com login someone password ghp_notawandbkey\n")
    assert auto_mode() == "offline" and not wandb_finds_a_key()
    import wandb

    run = wandb.init(project="netrc-test", mode=auto_mode(), dir=str(tmp_path))
    try:
        assert run.settings.mode == "offline"
    finally:
        run.finish()


def test_a_netrc_entry_for_the_wandb_host_runs_online(home):
    write_netrc(home, f"machine github.com login someone password x\nmachine api.wandb.ai login user password {KEY}\n")
    assert auto_mode() == "online" and wandb_finds_a_key()


def test_the_host_comes_from_wandb_base_url(home, monkeypatch):
    write_netrc(home, f"machine wandb.example.org login user password {KEY}\n")
    assert auto_mode() == "offline"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert auto_mode() == "online" and wandb_finds_a_key()


def test_a_malformed_or_missing_netrc_runs_offline(home, monkeypatch):
    assert auto_mode() == "offline"
    write_netrc(home, "machine api.wandb.ai login user password\n")
    assert auto_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert auto_mode() == "online"
