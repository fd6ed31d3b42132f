import numpy as np
import pytest

from braincorl_lite.metrics import (explained_variance, ncsnr_from_repeats, noise_ceiling_from_ncsnr,
                                    noise_ceiling_from_repeats, pearson_r, roi_summary)


def test_ev_perfect_and_offset_invariant(rng):
    y = rng.standard_normal((50, 4))
    assert np.allclose(explained_variance(y, y), 1.0)
    # the paper's EV uses Var(y - y_hat): a constant offset costs nothing
    assert np.allclose(explained_variance(y, y + 3.0), 1.0)


def test_ev_known_value(rng):
    signal = rng.standard_normal((200_000, 1))
    noise = rng.standard_normal((200_000, 1))
    y = signal + noise
    # predicting the signal explains half of the variance of signal + noise
    assert explained_variance(y, signal)[0] == pytest.approx(0.5, abs=0.01)
    # a constant prediction explains nothing; a scaled-up one is worse than nothing
    assert explained_variance(y, np.zeros_like(y))[0] == pytest.approx(0.0, abs=1e-12)
    assert explained_variance(y, 3 * signal)[0] < 0


def test_ev_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        explained_variance(np.zeros((5, 2)), np.zeros((5, 3)))


def test_pearson_matches_numpy(rng):
    a = rng.standard_normal((30, 3))
    b = a + rng.standard_normal((30, 3))
    r = pearson_r(a, b)
    for j in range(3):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1])


def test_noise_ceiling_recovers_known_snr(rng):
    n_img, n_vox, n_rep = 4000, 3, 3
    snr = np.array([0.2, 0.5, 1.0])  # signal sd / noise sd
    signal = rng.standard_normal((n_img, n_vox)) * snr
    reps = signal[None] + rng.standard_normal((n_rep, n_img, n_vox))
    ncsnr = ncsnr_from_repeats(reps)
    assert np.allclose(ncsnr, snr, atol=0.05)
    nc = noise_ceiling_from_repeats(reps)
    expected = snr ** 2 / (snr ** 2 + 1 / n_rep)
    assert np.allclose(nc, expected, atol=0.03)
    # the ceiling of the averaged responses is their achievable EV: check against the truth
    ev_truth = explained_variance(reps.mean(0), signal)
    assert np.allclose(nc, ev_truth, atol=0.03)
    # a single trial has a lower ceiling than the average of three
    assert np.all(noise_ceiling_from_repeats(reps, n_average=1) < nc)


def test_noise_ceiling_needs_repeats():
    with pytest.raises(ValueError, match="n_repeats >= 2"):
        ncsnr_from_repeats(np.zeros((1, 5, 2)))


def test_roi_summary():
    roi = np.array(["FFA", "FFA", "PPA", "other"])
    table = roi_summary({"ev": np.array([0.1, 0.3, 0.2, 0.0])}, roi)
    assert list(table.index) == ["FFA", "PPA", "other", "all"]
    assert table.loc["FFA", "ev"] == pytest.approx(0.2)
    assert table.loc["all", "n_voxels"] == 4
    assert table.loc["all", "ev"] == pytest.approx(0.15)


def test_ev_matches_sklearn(rng):
    from sklearn.metrics import explained_variance_score

    y = rng.standard_normal((40, 5))
    y_hat = 0.5 * y + rng.standard_normal((40, 5)) + 2.0
    expected = explained_variance_score(y, y_hat, multioutput="raw_values")
    np.testing.assert_allclose(explained_variance(y, y_hat), expected, rtol=1e-12)
    assert not np.allclose(expected, explained_variance(y, y))  # the comparison can fail


def test_noise_ceiling_from_ncsnr():
    assert noise_ceiling_from_ncsnr(np.array([1.0]), 3)[0] == pytest.approx(0.75)
    # images with different trial counts: NSD averages 1/n over images
    assert noise_ceiling_from_ncsnr(np.array([1.0]), [3, 2, 1])[0] == pytest.approx(1 / (1 + (1 / 3 + 1 / 2 + 1) / 3))
    assert noise_ceiling_from_ncsnr(np.array([np.inf, 0.0]), 3).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="at least one trial"):
        noise_ceiling_from_ncsnr(np.array([1.0]), 0)


def test_roi_summary_median_order_and_missing_roi():
    roi = np.array(["FFA", "FFA", "FFA", "PPA", "other"])
    ev = np.array([0.1, 0.2, 0.9, np.nan, 0.0])
    table = roi_summary({"ev": ev, "twice": 2 * ev}, roi, order=["PPA", "FFA", "VWFA"], stat="median")
    assert list(table.index) == ["PPA", "FFA", "VWFA", "all"] and list(table.columns) == ["n_voxels", "ev", "twice"]
    assert table.loc["FFA", "ev"] == pytest.approx(0.2) and table.loc["FFA", "twice"] == pytest.approx(0.4)
    assert np.isnan(table.loc["PPA", "ev"]) and table.loc["PPA", "n_voxels"] == 1
    assert table.loc["VWFA", "n_voxels"] == 0 and np.isnan(table.loc["VWFA", "ev"])
    assert table.loc["all", "n_voxels"] == 5 and table.loc["all", "ev"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="expected"):
        roi_summary({"ev": ev[:3]}, roi)
