import numpy as np
import pytest

from braincorl_lite.baselines import (anatomical_average, bayes_oracle, fit_ridge, predict_linear,
                                      ridge_closed_form)
from braincorl_lite.metrics import explained_variance
from braincorl_lite.simulate import MixturePrior


@pytest.mark.parametrize("K,E", [(40, 120), (300, 30)])  # kernel path (K < E) and primal path
def test_himalaya_ridge_matches_closed_form(rng, K, E):
    X = rng.standard_normal((K, E))
    Y = X @ rng.standard_normal((E, 3)) + rng.standard_normal((K, 3)) + 2.0
    for alpha in (0.1, 10.0):
        W, b = fit_ridge(X, Y, alphas=[alpha])
        W0, b0 = ridge_closed_form(X, Y, alpha)
        assert np.allclose(W, W0, atol=1e-3 * np.abs(W0).max())
        assert np.allclose(b, b0, atol=1e-3 * max(1.0, np.abs(b0).max()))


def test_ridge_cv_chooses_penalty_per_voxel(rng):
    X = rng.standard_normal((200, 20))
    clean = X @ rng.standard_normal(20)
    Y = np.stack([clean, rng.standard_normal(200)], axis=1)  # voxel 0 signal, voxel 1 pure noise
    W, b, alphas = fit_ridge(X, Y, return_alphas=True)
    assert alphas[0] < alphas[1]
    assert alphas[1] >= 100


def test_ridge_tiny_support(rng):
    X = rng.standard_normal((1, 5))
    W, b = fit_ridge(X, np.array([[2.0, 3.0]]))
    assert np.allclose(W, 0) and np.allclose(b, [2.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        fit_ridge(np.zeros((0, 5)), np.zeros((0, 2)))


def _small_prior():
    means = np.array([[1.0, -0.5, 0.0], [-1.0, 0.8, 0.5]])
    covs = np.array([np.diag([0.2, 0.3, 0.1]), [[0.5, 0.2, 0.0], [0.2, 0.4, 0.0], [0.0, 0.0, 0.2]]])
    return MixturePrior(names=["a", "b"], means=means, covs=covs, offset_covs=np.zeros_like(covs),
                        weights=np.array([0.3, 0.7]))


def test_oracle_matches_monte_carlo_posterior(rng):
    prior = _small_prior()
    X = rng.standard_normal((4, 2))
    noise_var = np.array([0.5, 2.0])
    theta_true, _ = prior.sample(2, rng)
    Phi = np.hstack([X, np.ones((4, 1))])
    Y = Phi @ theta_true.T + rng.standard_normal((4, 2)) * np.sqrt(noise_var)
    W, b, resp = bayes_oracle(X, Y, prior, noise_var, return_responsibilities=True)
    # Monte Carlo: sample the prior, weight each draw by its likelihood
    draws, comp = prior.sample(400_000, rng)
    for v in range(2):
        resid = Y[:, v][None, :] - draws @ Phi.T
        logw = -0.5 * (resid ** 2).sum(1) / noise_var[v]
        w = np.exp(logw - logw.max())
        w /= w.sum()
        mc_mean = w @ draws
        mc_resp = np.array([w[comp == c].sum() for c in range(2)])
        assert np.allclose(np.append(W[v], b[v]), mc_mean, atol=0.02), (v, mc_mean)
        assert np.allclose(resp[v], mc_resp, atol=0.01)


def test_oracle_single_gaussian_closed_form(rng):
    E = 6
    A = rng.standard_normal((E + 1, E + 1))
    S = A @ A.T / E + 0.1 * np.eye(E + 1)
    mu = rng.standard_normal(E + 1)
    prior = MixturePrior(["g"], mu[None], S[None], np.zeros((1, E + 1, E + 1)))
    for K in (3, 20):  # fewer and more observations than parameters
        X = rng.standard_normal((K, E))
        Y = rng.standard_normal((K, 1))
        W, b = bayes_oracle(X, Y, prior, np.array([0.7]))
        Phi = np.hstack([X, np.ones((K, 1))])
        prec = np.linalg.inv(S) + Phi.T @ Phi / 0.7
        post = np.linalg.solve(prec, np.linalg.solve(S, mu) + Phi.T @ Y[:, 0] / 0.7)
        assert np.allclose(np.append(W[0], b[0]), post, atol=1e-8)


@pytest.mark.parametrize("k", [10, 50])
def test_oracle_beats_ridge_on_simnsd(tiny, k):
    subj = tiny[0]
    prior = tiny.subject_prior(0)
    support = subj.unique_idx[:k]
    q = subj.shared_idx
    X, Y = subj.features[support], subj.betas[support]
    noise_var = subj.truth.effective_noise_var(subj.n_repeats)
    Wo, bo = bayes_oracle(X, Y, prior, noise_var)
    Wr, br = fit_ridge(X, Y)
    # expected squared error of the predicted noise-free responses, over query images and voxels
    clean = subj.truth.predict(subj.features[q])
    err_o = ((predict_linear(subj.features[q], Wo, bo) - clean) ** 2).mean()
    err_r = ((predict_linear(subj.features[q], Wr, br) - clean) ** 2).mean()
    assert err_o < err_r
    ev_o = explained_variance(subj.betas[q], predict_linear(subj.features[q], Wo, bo)).mean()
    ev_r = explained_variance(subj.betas[q], predict_linear(subj.features[q], Wr, br)).mean()
    assert ev_o > ev_r


def test_anatomical_average_same_vertices(rng):
    coords = rng.uniform(-50, 50, size=(40, 3))
    W1, W2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    b1, b2 = rng.standard_normal(5), rng.standard_normal(5)
    vert = np.arange(5)
    coords[:5] = np.arange(5)[:, None] * 100.0  # far apart: only the same vertex is in reach
    W, b = anatomical_average([(vert, W1, b1), (vert, W2, b2)], vert, radius=1.0, coords=coords)
    assert np.allclose(W, (W1 + W2) / 2) and np.allclose(b, (b1 + b2) / 2)
    # a target vertex with no neighbour in reach takes the nearest one of each subject
    W, b = anatomical_average([(vert, W1, b1)], np.array([0]), radius=1e-6, coords=coords)
    assert np.allclose(W[0], W1[0])
    with pytest.raises(ValueError, match="surface vertices"):
        anatomical_average([(vert, W1, b1)], np.array([-1]), coords=coords)
