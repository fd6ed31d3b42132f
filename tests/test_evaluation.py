"""Helpers of the few-shot and test-time scaling chapters (braincorl_lite.evaluation)."""

import numpy as np
import pytest

from braincorl_lite.baselines import predict_linear
from braincorl_lite.evaluation import (anatomical_for, anatomical_for_voxels, cosine_per_voxel, encoder_ev,
                                       evaluate_heldout, evaluate_heldout_subset, images_to_match)
from braincorl_lite.metrics import explained_variance


def test_cosine_per_voxel(rng):
    A = rng.standard_normal((5, 8))
    c = cosine_per_voxel(A, 3 * A)
    assert np.allclose(c, 1)
    assert np.allclose(cosine_per_voxel(A, -A), -1)
    B = rng.standard_normal((5, 8))
    expected = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(A, B)]
    assert np.allclose(cosine_per_voxel(A, B), expected)
    A[2] = 0
    assert np.isnan(cosine_per_voxel(A, B)[2])
    with pytest.raises(ValueError, match="same shape"):
        cosine_per_voxel(A, B[:, :3])


def test_encoder_ev_uses_shared_images(tiny):
    s = tiny[0]
    ev = encoder_ev(s, s.truth.weights, s.truth.bias)
    q = s.shared_idx
    assert np.allclose(ev, explained_variance(s.betas[q], predict_linear(s.features[q], s.truth.weights, s.truth.bias)))
    # the true encoder explains variance; a zero encoder with the mean of the unique images does not
    assert np.mean(ev) > 0.05
    zero = encoder_ev(s, np.zeros_like(s.truth.weights), s.betas[s.unique_idx].mean(0))
    assert np.all(zero <= 1e-6)


def test_anatomical_for_voxels_matches_full(tiny):
    W, b = anatomical_for(tiny, 0)
    sub = np.arange(0, tiny[0].n_voxels, 3)
    W2, b2 = anatomical_for_voxels(tiny, 0, sub)
    assert W2.shape == (sub.size, W.shape[1])
    assert np.allclose(W2, W[sub], atol=1e-5)
    assert np.allclose(b2, b[sub], atol=1e-5)


def test_evaluate_heldout_subset_draws_and_nesting(tiny):
    ks = [10, 30, 100]
    sub = np.arange(0, tiny[0].n_voxels, 2)
    table = evaluate_heldout_subset(None, tiny, 1, ks, voxels=sub, n_draws={10: 2, 30: 2, 100: 1},
                                    progress=False)
    allv = table[table.roi == "all"]
    draws = allv.groupby(["method", "k"]).draw.nunique()
    assert draws["ridge", 10] == 2 and draws["ridge", 100] == 1 and draws["oracle", 30] == 2
    assert set(allv.method) == {"ridge", "oracle", "fully_trained", "anatomical"}
    assert (allv.method == "fully_trained").sum() == 1 and (allv.method == "anatomical").sum() == 1
    assert (allv.n_voxels == sub.size).all()
    # draw 0 uses the same support sets as evaluate_heldout (one seed, nested orders)
    ref = evaluate_heldout(None, tiny, 1, ks, n_draws=1, anatomical=False, progress=False)
    mine = evaluate_heldout_subset(None, tiny, 1, ks, n_draws={10: 1, 30: 2, 100: 1}, anatomical=False,
                                   progress=False)
    key = ["method", "k", "roi"]
    a = ref[(ref.draw == 0) & (ref.method == "ridge")].set_index(key).ev
    m = mine[(mine.draw == 0) & (mine.method == "ridge")].set_index(key).ev
    assert np.allclose(a.sort_index(), m.sort_index())
    # more support images, better ridge
    mean = allv.groupby(["method", "k"]).ev.mean()
    assert mean["ridge", 100] > mean["ridge", 10]


def test_images_to_match_ratio():
    k = [10, 100, 1000]
    assert images_to_match(k, [0.0, 0.1, 0.2], 0.15) == pytest.approx(np.sqrt(100 * 1000))
    assert images_to_match(k, [0.0, 0.1, 0.2], 0.3) == float("inf")
