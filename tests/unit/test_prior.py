"""The face prior: float64 streaming mean, PCA, provenance, refusal of another VAE, `seespeaker prior`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from datamodules.sample import Clip, ClipMeta, decode_frames
from datamodules.shards import ShardSetWriter
from lightning_modules.autoencoder import AutoencoderStage, encode_latents
from lightning_modules.prior import FacePrior, FacePriorError, LatentMoments, compute_face_prior
from lightning_modules.stagefile import StageFiles
from tests.unit.stage1_helpers import export, tiny_autoencoder, tiny_data
from trainer.cli import main


def test_streaming_mean_is_float64_and_equals_direct_mean():
    g = torch.Generator().manual_seed(0)
    batches = [1000.0 + torch.randn(n, 4, 8, 8, generator=g) for n in (5, 1, 7, 3)]
    prior = compute_face_prior(iter(batches), vae_hash="abc", shards=["a.tar"])
    direct = torch.cat([b.double() for b in batches]).mean(0)
    assert prior.mean.dtype == torch.float64 and prior.count == 16
    assert torch.allclose(prior.mean, direct, rtol=0, atol=1e-10)
    float32_mean = torch.stack([b.sum(0) for b in batches]).sum(0) / 16  # what a float32 accumulator gives
    assert (float32_mean.double() - direct).abs().max() > (prior.mean - direct).abs().max()


def test_pca_basis_is_orthonormal_and_matches_the_covariance():
    g = torch.Generator().manual_seed(1)
    mixing = torch.randn(2 * 3 * 3, 2 * 3 * 3, generator=g)
    data = (torch.randn(200, 18, generator=g) @ mixing).reshape(200, 2, 3, 3)
    moments = LatentMoments((2, 3, 3), track_covariance=True)
    for chunk in data.split(37):
        moments.update(chunk)
    basis, values = moments.pca(5)
    assert torch.allclose(basis @ basis.T, torch.eye(5, dtype=torch.float64), atol=1e-10)
    expected = np.sort(np.linalg.eigvalsh(np.cov(data.reshape(200, -1).double().numpy(), rowvar=False)))[::-1][:5]
    assert np.allclose(values.numpy(), expected, rtol=1e-8)
    assert torch.all(values[:-1] >= values[1:])


def test_prior_file_round_trip_and_refusal_of_another_vae(tmp_path):
    latents = [torch.randn(4, 4, 8, 8) for _ in range(3)]
    prior = compute_face_prior(latents, vae_hash="vae1111", pca=3, shards=["train/shard-000000.tar"])
    path = prior.save(tmp_path / "face_prior.safetensors")
    loaded = FacePrior.load(path, expect_vae_hash="vae1111")
    assert torch.equal(loaded.mean, prior.mean) and torch.equal(loaded.basis, prior.basis)
    assert loaded.count == 12 and loaded.shards == ["train/shard-000000.tar"]
    with pytest.raises(FacePriorError, match="vae1111.*vae2222"):
        FacePrior.load(path, expect_vae_hash="vae2222")
    with pytest.raises(FacePriorError, match="seespeaker prior"):
        FacePrior.load(tmp_path / "missing.safetensors")


def write_clips(root, count: int, resolution: int = 32) -> list[np.ndarray]:
    """A one-shard training split; returns each clip's first frame."""
    rng = np.random.default_rng(0)
    firsts = []
    with ShardSetWriter(root, "synthetic", shard_size=3) as writer:
        for i in range(count):
            frames = rng.integers(0, 256, (2, resolution, resolution, 3), dtype=np.uint8)
            meta = ClipMeta("synthetic", f"s{i % 2}", f"v{i}", 0, "train", 2, resolution=resolution)
            writer.write(Clip(f"synthetic-s{i % 2}-v{i}-0", frames, rng.uniform(-0.5, 0.5, 16000).astype(np.float32),
                              np.zeros((2, 68, 2), np.float32), meta))
            firsts.append(frames[0])
    return firsts


def test_prior_command_streams_the_training_shards_through_the_vae(tmp_path, capsys):
    torch.manual_seed(0)
    firsts = write_clips(tmp_path / "data", count=7)
    stages = tmp_path / "stages"
    module = AutoencoderStage(tiny_autoencoder(), tiny_data())
    module.scaling_factor.fill_(0.6)
    export(module, stages / "autoencoder.safetensors")
    out = stages / "face_prior.safetensors"
    code = main(["prior", "--data", str(tmp_path / "data"), "--stages", str(stages), "--out", str(out),
                 "--pca", "2", "--batch-size", "3", "--resolution", "32"])
    assert code == 0
    vae, scaling, vae_hash = AutoencoderStage.for_inference(StageFiles(stages))
    decoded = [decode_frames(sample, [0], 32)[0] for sample in
               wds.WebDataset(sorted(str(p) for p in (tmp_path / "data" / "train").glob("*.tar")), shardshuffle=False)]
    assert len(decoded) == len(firsts)
    images = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        direct = encode_latents(vae, images, scaling).double().mean(0)
    prior = FacePrior.load(out, expect_vae_hash=vae_hash)
    assert prior.count == 7 and len(prior.shards) == 3  # shard_size=3: 3 + 3 + 1
    assert torch.allclose(prior.mean, direct, atol=1e-6)
    assert prior.basis.shape == (2, direct.numel())
    assert "7 faces" in capsys.readouterr().out


def test_prior_command_errors_name_the_missing_thing(tmp_path, capsys):
    write_clips(tmp_path / "data", count=2)
    code = main(["prior", "--data", str(tmp_path / "data"), "--stages", str(tmp_path / "nostages"),
                 "--out", str(tmp_path / "p.safetensors"), "--resolution", "32"])
    assert code == 2
    assert "autoencoder.safetensors" in capsys.readouterr().err
