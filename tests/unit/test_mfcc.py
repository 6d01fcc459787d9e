"""The batched MFCC equals python_speech_features' reference MFCC (SyncNet's audio input)."""

import numpy as np
import pytest
import python_speech_features
import torch

from evaluation.mfcc import float_audio_to_int16_scale, mfcc, num_mfcc_frames, syncnet_mfcc


@pytest.mark.parametrize("n_samples", [1, 399, 400, 401, 560, 561, 6400, 16001])
def test_mfcc_equals_python_speech_features_on_int16_audio(n_samples):
    audio = np.random.default_rng(n_samples).integers(-32768, 32768, n_samples).astype(np.int16)
    reference = python_speech_features.mfcc(audio, 16000)
    ours = mfcc(torch.from_numpy(audio)).numpy()
    assert ours.shape == reference.shape == (num_mfcc_frames(n_samples), 13)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)


def test_mfcc_is_batched_over_leading_dimensions():
    audio = np.random.default_rng(1).integers(-3000, 3000, (2, 3, 4000)).astype(np.int16)
    batched = mfcc(torch.from_numpy(audio))
    assert batched.shape == (2, 3, num_mfcc_frames(4000), 13)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(batched[i, j].numpy(), python_speech_features.mfcc(audio[i, j], 16000),
                                       rtol=1e-9, atol=1e-9)


def test_silence_uses_the_reference_log_floor():
    silence = np.zeros(2000, dtype=np.int16)
    np.testing.assert_allclose(mfcc(silence).numpy(), python_speech_features.mfcc(silence, 16000),
                               rtol=1e-12, atol=1e-9)


def test_float_audio_is_scaled_back_to_int16_values_and_laid_out_for_syncnet():
    ints = np.random.default_rng(2).integers(-32768, 32768, 3200).astype(np.int16)
    as_read_by_soundfile = ints.astype(np.float32) / 32768.0
    restored = float_audio_to_int16_scale(as_read_by_soundfile)
    assert torch.equal(restored, torch.from_numpy(ints).double())
    layout = syncnet_mfcc(restored)
    assert layout.shape == (13, num_mfcc_frames(3200))
    np.testing.assert_allclose(layout.T.numpy(), python_speech_features.mfcc(ints, 16000), rtol=1e-9, atol=1e-9)


def test_float32_precision_stays_close_to_the_reference():
    audio = np.random.default_rng(3).integers(-20000, 20000, 8000).astype(np.int16)
    ours = mfcc(audio, dtype=torch.float32).numpy()
    np.testing.assert_allclose(ours, python_speech_features.mfcc(audio, 16000), rtol=1e-3, atol=1e-2)


def test_empty_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        mfcc(np.zeros(0, dtype=np.int16))
