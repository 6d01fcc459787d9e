"""SyncNetOfficial matches the reference SyncNet (syncnet-python 0.2.3) key for key and output for output."""


import numpy as np
import pytest
import torch

from lightning_modules.nets.syncnet import (
    SyncNetCompact,
    SyncNetOfficial,
    SyncNetWeightsError,
    build_syncnet,
    load_official_syncnet,
    mfcc_windows,
    video_windows,
)
from tests.unit.syncnet_reference import load_reference_module


@pytest.fixture(scope="module")
def reference_net():
    torch.manual_seed(0)
    net = load_reference_module("SyncNetModel").S(num_layers_in_fc_layers=1024)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def test_key_names_shapes_and_size_equal_the_reference(reference_net):
    ours = SyncNetOfficial().state_dict()
    reference = reference_net.state_dict()
    assert list(ours) == list(reference)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}
    weights = [k for k in ours if not k.endswith("num_batches_tracked")]
    assert len(weights) == 88 and len(ours) - len(weights) == 14
    assert sum(ours[k].numel() for k in weights) == 13_640_256


def test_same_weights_give_the_same_embeddings(reference_net):
    ours = SyncNetOfficial()
    ours.load_state_dict(reference_net.state_dict(), strict=True)
    ours.eval()
    torch.manual_seed(1)
    video = torch.rand(2, 3, 5, 224, 224) * 255
    mfcc = torch.randn(2, 1, 13, 20) * 10
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_lip(video), reference_net.forward_lip(video), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.forward_aud(mfcc), reference_net.forward_aud(mfcc), rtol=1e-5, atol=1e-5)
    assert ours.forward_aud(mfcc).shape == (2, 1024)


def test_official_file_without_num_batches_tracked_loads(reference_net, tmp_path):
    state = {k: v for k, v in reference_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    model = load_official_syncnet(path)
    assert not model.training
    assert model.weights_sha256 is not None and len(model.weights_sha256) == 64
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_wrong_layout_file_names_the_mismatched_keys(tmp_path):
    path = tmp_path / "compact.pt"
    torch.save(SyncNetCompact().state_dict(), path)
    with pytest.raises(SyncNetWeightsError) as error:
        SyncNetOfficial().load_official_weights(path)
    message = str(error.value)
    assert "missing" in message and "netcnnaud.8.weight" in message
    assert "wrong shape" in message and "netcnnaud.0.weight" in message
    assert str(path) in message


def test_extra_key_and_pickled_object_are_refused(reference_net, tmp_path):
    state = dict(reference_net.state_dict())
    state["netextra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.model"
    torch.save(state, path)
    with pytest.raises(SyncNetWeightsError, match="unexpected: netextra.weight"):
        SyncNetOfficial().load_official_weights(path)
    pickled = tmp_path / "module.model"
    torch.save(SyncNetCompact(), pickled)
    with pytest.raises(SyncNetWeightsError, match="not a loadable state_dict"):
        SyncNetOfficial().load_official_weights(pickled)


def test_preprocess_gives_bgr_0_255_at_input_size_for_uint8_and_float_frames():
    expert = build_syncnet("compact", width=8, embedding_dim=16)
    rgb = np.zeros((6, 64, 64, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 10
    from_uint8 = expert.preprocess(rgb)
    assert from_uint8.shape == (6, 3, 64, 64) and from_uint8.dtype == torch.float32
    assert torch.all(from_uint8[:, 0] == 10) and torch.all(from_uint8[:, 2] == 200)
    as_float = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div(127.5).sub(1).unsqueeze(0)
    torch.testing.assert_close(expert.preprocess(as_float)[0], from_uint8)
    bigger = build_syncnet("official").preprocess(rgb)
    assert bigger.shape == (6, 3, 224, 224) and torch.allclose(bigger[:, 2], torch.tensor(200.0))


def test_windows_take_frames_i_to_i_plus_4_and_mfcc_columns_4i_to_4i_plus_19():
    frames = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 3, 4, 4)
    windows = video_windows(frames, [0, 3])
    assert windows.shape == (2, 3, 5, 4, 4)
    assert windows[1, 0, :, 0, 0].tolist() == [3, 4, 5, 6, 7]
    mfcc = torch.arange(40.0).expand(13, 40)
    columns = mfcc_windows(mfcc, [2])
    assert columns.shape == (1, 1, 13, 20) and columns[0, 0, 0].tolist() == list(range(8, 28))


def test_compact_expert_has_the_common_interface():
    expert = build_syncnet("compact", embedding_dim=32, width=8).eval()
    with torch.no_grad():
        assert expert.forward_lip(torch.rand(3, 3, 5, 64, 64) * 255).shape == (3, 32)
        assert expert.forward_aud(torch.randn(3, 1, 13, 20)).shape == (3, 32)
    assert expert.input_size == 64
    with pytest.raises(ValueError, match="unknown SyncNet layout"):
        build_syncnet("huge")
