"""Helpers of the few-shot and test-time scaling chapters (braincorl_lite.evaluation)."""

import numpy as np
import pytest

import braincorl_lite.evaluation as evaluation
from braincorl_lite.baselines import anatomical_average, fit_ridge, fit_ridge_paper, fully_trained, predict_linear
from braincorl_lite.errors import BraInCoRLError, ConfigError, NonFiniteError
from braincorl_lite.evaluation import (anatomical_for, cosine_per_voxel, encoder_ev, evaluate_heldout,
                                       evaluate_subject, few_shot_methods, images_to_match, simulation_report)
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


def test_anatomical_for_some_voxels_matches_full(tiny):
    W, b = anatomical_for(tiny, 0)
    sub = np.arange(0, tiny[0].n_voxels, 3)
    W2, b2 = anatomical_for(tiny, 0, voxels=sub)
    assert W2.shape == (sub.size, W.shape[1])
    assert np.allclose(W2, W[sub], atol=1e-5)
    assert np.allclose(b2, b[sub], atol=1e-5)


def test_evaluate_heldout_voxel_subset_draws_and_nesting(tiny):
    ks = [10, 30, 100]
    sub = np.arange(0, tiny[0].n_voxels, 2)
    table = evaluate_heldout(None, tiny, 0, ks, voxels=sub, n_draws={10: 2, 30: 2, 100: 1},
                                    progress=False)
    allv = table[table.roi == "all"]
    draws = allv.groupby(["method", "k"]).draw.nunique()
    assert draws["ridge", 10] == 2 and draws["ridge", 100] == 1 and draws["oracle", 30] == 2
    assert set(allv.method) == {"ridge", "ridge_paper", "oracle", "fully_trained", "anatomical"}
    assert (allv.method == "fully_trained").sum() == 1 and (allv.method == "anatomical").sum() == 1
    assert (allv.n_voxels == sub.size).all()
    # draw 0 uses the same support sets as evaluate_heldout (one seed, nested orders)
    ref = evaluate_heldout(None, tiny, 0, ks, n_draws=1, anatomical=False, progress=False)
    mine = evaluate_heldout(None, tiny, 0, ks, n_draws={10: 1, 30: 2, 100: 1}, anatomical=False,
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


# ----------------------------------------------------------------------------------------------
# The paper-protocol ridge is evaluated by default, and no method is ever dropped silently
# ----------------------------------------------------------------------------------------------
def test_ridge_paper_rows_and_subject_column(tiny):
    assert set(few_shot_methods(tiny[0], tiny.subject_prior(0))) == {"ridge", "ridge_paper", "oracle"}
    table = evaluate_heldout(None, tiny, 1, [10, 30], n_draws=1, anatomical=False, progress=False)
    allv = table[table.roi == "all"]
    assert set(allv.method) == {"ridge", "ridge_paper", "oracle", "fully_trained"}
    assert set(allv[allv.method == "ridge_paper"].k) == {10, 30}
    # the table names the evaluated subject (position 1)
    assert "subject" in table.columns and set(table.subject) == {tiny[1].subject}
    # the ridge_paper rows are fit_ridge_paper on the same support sets as ridge
    s = tiny[1]
    support = np.sort(np.random.default_rng(0).permutation(s.unique_idx)[:30])
    q = s.shared_idx
    W, b = fit_ridge_paper(s.features[support], s.betas[support])
    ev = np.nanmean(explained_variance(s.betas[q], predict_linear(s.features[q], W, b)))
    got = allv[(allv.method == "ridge_paper") & (allv.k == 30)].ev.item()
    assert got == pytest.approx(ev, abs=1e-10)
    # and only the asked-for baselines when asked
    t = evaluate_heldout(None, tiny, 1, [10], n_draws=1, anatomical=False, oracle=False, progress=False,
                         baselines=("ridge_paper",))
    assert set(t.method) == {"ridge_paper", "fully_trained"}


def test_nonfinite_predictions_raise(tiny):
    s = tiny[0]

    def broken(X, Y):  # e.g. a checkpoint with NaN weights
        W, b = fit_ridge(X, Y)
        W[3, :] = np.nan
        return W, b

    methods = {"braincorl": broken, "ridge": lambda X, Y: fit_ridge(X, Y)}
    with pytest.raises(NonFiniteError, match=r"'braincorl'.*K = 10") as err:
        evaluate_subject(s, [10, 30], methods, n_draws=1)
    assert isinstance(err.value, BraInCoRLError) and isinstance(err.value, FloatingPointError)
    inf_bias = lambda X, Y: (np.zeros((s.n_voxels, X.shape[1])), np.full(s.n_voxels, np.inf))
    with pytest.raises(NonFiniteError, match=r"'odd'.*K = 30"):
        evaluate_subject(s, [30], {"odd": inf_bias}, n_draws=1)
    # the encoders that do not depend on K are checked too
    W, b = np.zeros((s.n_voxels, s.features.shape[1])), np.full(s.n_voxels, np.nan)
    with pytest.raises(NonFiniteError, match="'anatomical'"):
        evaluate_subject(s, [10], {}, anatomical_encoder=(W, b))


def _never_called(*args, **kwargs):
    raise AssertionError("expensive work started before the arguments were checked")


@pytest.mark.parametrize("n_draws", [0, -1, 1.5])
def test_bad_n_draws_is_refused_before_any_work(tiny, monkeypatch, n_draws):
    with pytest.raises(ConfigError, match="n_draws"):
        evaluate_subject(tiny[0], [10], {"ridge": _never_called}, n_draws=n_draws)
    monkeypatch.setattr(evaluation, "fully_trained", _never_called)
    monkeypatch.setattr(evaluation, "anatomical_for", _never_called)
    with pytest.raises(ConfigError, match="n_draws"):
        evaluate_heldout(None, tiny, 0, [10], n_draws=n_draws, progress=False)
    with pytest.raises(ConfigError, match="n_draws"):
        evaluate_heldout(None, tiny, 0, [10, 30], n_draws={10: 1, 30: n_draws}, progress=False)


def test_n_draws_dict_must_cover_every_k(tiny, monkeypatch):
    monkeypatch.setattr(evaluation, "fully_trained", _never_called)
    with pytest.raises(ConfigError, match=r"K = \[30\]"):
        evaluate_heldout(None, tiny, 0, [10, 30], n_draws={10: 1}, progress=False)


@pytest.mark.parametrize("ks", [[0], [10, -5], [10, 301], [], [2.5]])
def test_bad_k_is_refused_before_any_work(tiny, monkeypatch, ks):
    n_unique = tiny[0].unique_idx.size
    assert n_unique == 300
    with pytest.raises(ConfigError):
        evaluate_subject(tiny[0], ks, {"ridge": _never_called})
    monkeypatch.setattr(evaluation, "fully_trained", _never_called)
    monkeypatch.setattr(evaluation, "anatomical_for", _never_called)
    monkeypatch.setattr(evaluation, "simulation_checks", _never_called)
    with pytest.raises(ConfigError):
        evaluate_heldout(None, tiny, 0, ks, progress=False)
    with pytest.raises(ConfigError):
        evaluate_heldout(None, tiny, 0, ks, progress=False)
    with pytest.raises(ConfigError):
        simulation_report(tiny, 0, ks=ks, progress=False)
    # K equal to the number of unique images is allowed
    assert evaluation.check_ks([1, n_unique], n_unique) == [1, n_unique]


def test_heldout_subject_out_of_range_is_refused(tiny, monkeypatch):
    n = len(tiny)
    monkeypatch.setattr(evaluation, "fully_trained", _never_called)
    monkeypatch.setattr(evaluation, "simulation_checks", _never_called)
    # 0-based positions everywhere in the Python API: -1 must not wrap around to the last subject
    for bad in (-1, -n, n, n + 1):
        with pytest.raises(ConfigError, match="0-based"):
            evaluate_heldout(None, tiny, bad, [10], progress=False)
        with pytest.raises(ConfigError, match="0-based"):
            evaluate_heldout(None, tiny, bad, [10], progress=False)
        with pytest.raises(ConfigError, match="0-based"):
            simulation_report(tiny, heldout=bad, ks=[10], progress=False)
        with pytest.raises(ConfigError, match="0-based"):
            anatomical_for(tiny, bad)
        with pytest.raises(ConfigError, match="0-based"):
            anatomical_for(tiny, bad, voxels=[0, 1])
    assert evaluation.subject_position(tiny, n, one_based=True) == n - 1
    assert evaluation.subject_position(tiny, 0, one_based=False) == 0


def test_anatomical_average_never_contains_the_heldout_subject(tiny, monkeypatch):
    seen = []

    def recording(data, *args, **kwargs):
        seen.append(data.subject)
        return fully_trained(data, *args, **kwargs)

    monkeypatch.setattr(evaluation, "fully_trained", recording)
    W, b = anatomical_for(tiny, 1)
    assert sorted(seen) == sorted([tiny[0].subject, tiny[2].subject])
    train = [(tiny[i].vertex, *fully_trained(tiny[i])) for i in (0, 2)]
    W0, b0 = anatomical_average(train, tiny[1].vertex)
    assert np.allclose(W, W0) and np.allclose(b, b0)
    with pytest.raises(ConfigError, match="own anatomical average"):
        anatomical_for(tiny, 1, train_idx=[0, 1])
    with pytest.raises(ConfigError, match="0-based"):
        anatomical_for(tiny, 1, train_idx=[0, -1])
    with pytest.raises(ConfigError, match="at least one"):
        anatomical_for(tiny, 1, train_idx=[])
    # evaluate_heldout's anatomical rows use the other subjects only
    seen.clear()
    table = evaluate_heldout(None, tiny, 2, [10], n_draws=1, oracle=False, progress=False, baselines=("ridge",))
    assert seen.count(tiny[2].subject) == 1  # its own fully trained encoder, never in the average
    assert sorted(set(seen)) == sorted(s.subject for s in tiny)
    assert set(table.subject) == {tiny[2].subject}


def test_braincorl_method_goes_through_fit_braincorl(rng):
    import torch

    from braincorl_lite.evaluation import braincorl_method, model_methods
    from braincorl_lite.model import BraInCoRL, ModelConfig, fit_braincorl

    torch.manual_seed(0)
    model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=1))
    X, Y = rng.standard_normal((20, 16)), rng.standard_normal((20, 7))
    W, b = braincorl_method(model)(X, Y)
    W_ref, b_ref = fit_braincorl(model, X.astype(np.float32), Y.astype(np.float32))
    assert W.shape == (7, 16) and b.shape == (7,)
    np.testing.assert_allclose(predict_linear(X, W, b), X @ W_ref.T + b_ref, rtol=1e-4, atol=1e-4)
    assert set(model_methods({"a": model, "b": model})) == {"a", "b"} and model_methods(None) == {}
