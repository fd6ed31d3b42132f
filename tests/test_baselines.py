import numpy as np
import pytest

from braincorl_lite.baselines import (PAPER_ALPHAS, anatomical_average, bayes_oracle, fit_ridge, fit_ridge_paper,
                                      predict_linear, ridge_closed_form)
from braincorl_lite.errors import ConfigError
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


# ----------------------------------------------------------------------------------------------
# The official BraInCoRL ridge protocol (fit_ridge_paper)
# ----------------------------------------------------------------------------------------------
def _ridge_paper_literal(X, Y, alphas=PAPER_ALPHAS, n_folds=5):
    """The protocol written out voxel by voxel, fold by fold, penalty by penalty (slow, obvious)."""
    K, E = X.shape
    A = np.hstack([X, np.ones((K, 1))])
    n_folds = min(n_folds, K // 2)
    size = K // n_folds
    W = np.zeros((Y.shape[1], E))
    b = np.zeros(Y.shape[1])
    chosen = np.zeros(Y.shape[1])
    for v in range(Y.shape[1]):
        y = Y[:, v]
        evs = np.zeros((n_folds, len(alphas)))
        thetas = np.zeros((n_folds, len(alphas), E + 1))
        for f in range(n_folds):
            test = np.arange(f * size, (f + 1) * size)
            train = np.setdiff1d(np.arange(K), test)
            for j, lam in enumerate(alphas):
                theta = np.linalg.solve(A[train].T @ A[train] + lam * np.eye(E + 1), A[train].T @ y[train])
                thetas[f, j] = theta
                evs[f, j] = 1 - np.var(y[test] - A[test] @ theta) / np.var(y[test])
        best = int(np.argmax(evs.mean(0)))
        theta = thetas[:, best].mean(0)
        W[v], b[v], chosen[v] = theta[:E], theta[E], alphas[best]
    return W, b, chosen


@pytest.mark.parametrize("K,E", [(53, 8),    # primal: more training images than features
                                 (24, 40),   # dual: fewer images than features
                                 (9, 5),     # small K: 4 folds of 2 images
                                 (5, 30)])   # 2 folds of 2 images, dual
def test_ridge_paper_matches_literal_loop(rng, K, E):
    X = rng.standard_normal((K, E))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    scale = np.array([0.0, 0.3, 1.0, 3.0, 10.0])  # from pure noise to strong signal
    Y = (X @ rng.standard_normal((E, 5))) * scale + rng.standard_normal((K, 5)) + 0.5
    W, b, alphas = fit_ridge_paper(X, Y, return_alphas=True)
    W0, b0, alphas0 = _ridge_paper_literal(X, Y)
    assert np.array_equal(alphas, alphas0)
    assert np.allclose(W, W0, atol=1e-8, rtol=1e-6)
    assert np.allclose(b, b0, atol=1e-8, rtol=1e-6)
    # vectorised over voxels: one voxel at a time gives the same encoders
    for v in (0, 3):
        Wv, bv = fit_ridge_paper(X, Y[:, v])
        assert np.allclose(Wv[0], W[v], atol=1e-10) and np.allclose(bv[0], b[v], atol=1e-10)


def test_ridge_paper_noise_free_recovers_weights(rng):
    X = rng.standard_normal((200, 10))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    W_true = rng.standard_normal((4, 10))
    b_true = np.array([0.0, 1.0, -2.0, 0.5])
    W, b, alphas = fit_ridge_paper(X, predict_linear(X, W_true, b_true), return_alphas=True)
    assert np.all(alphas == PAPER_ALPHAS[0])  # noise-free: the smallest penalty wins
    assert np.allclose(W, W_true, atol=2e-3) and np.allclose(b, b_true, atol=2e-3)
    assert np.allclose(PAPER_ALPHAS, [1e-3, 1e-2, 1e-1, 1, 10, 1e2, 1e3, 1e4, 1e5])


def test_ridge_paper_intercept_is_penalised(rng):
    # a constant response with no feature signal: a huge penalty shrinks the intercept too
    X = rng.standard_normal((50, 6))
    Y = np.full((50, 1), 3.0) + 0.01 * rng.standard_normal((50, 1))
    _, b = fit_ridge_paper(X, Y, alphas=[1e5])
    assert abs(b[0]) < 0.01  # fit_ridge (unpenalised intercept) would give about 3
    _, b = fit_ridge_paper(X, Y, alphas=[1e-3])
    assert abs(b[0] - 3.0) < 0.01


def test_ridge_paper_folds_are_sequential(rng):
    K, E = 60, 12  # 5 folds of 12 images
    X = rng.standard_normal((K, E))
    Y = X @ rng.standard_normal((E, 30)) * 0.5 + rng.standard_normal((K, 30))
    W, b, a = fit_ridge_paper(X, Y, return_alphas=True)
    # the same rows in the same order: the same answer
    W1, b1 = fit_ridge_paper(X.copy(), Y.copy())
    assert np.array_equal(W, W1) and np.array_equal(b, b1)
    # moving whole folds around keeps the set of (training, held-out) splits: same answer
    roll = np.roll(np.arange(K), -12)
    W2, b2, a2 = fit_ridge_paper(X[roll], Y[roll], return_alphas=True)
    assert np.array_equal(a, a2) and np.allclose(W, W2, atol=1e-10) and np.allclose(b, b2, atol=1e-10)
    # shuffling the rows changes the folds, hence the answer
    perm = rng.permutation(K)
    W3, b3 = fit_ridge_paper(X[perm], Y[perm])
    assert not np.allclose(W, W3, atol=1e-6)
    # the images left over by K % 5 are never held out: with K = 62 the last two only ever train
    X62 = np.vstack([X, rng.standard_normal((2, E))])
    Y62 = np.vstack([Y, rng.standard_normal((2, 30))])
    W4, b4, a4 = fit_ridge_paper(X62, Y62, return_alphas=True)
    W5, b5, a5 = _ridge_paper_literal(X62, Y62)
    assert np.array_equal(a4, a5) and np.allclose(W4, W5, atol=1e-8)


def test_ridge_paper_tiny_support_and_errors(rng):
    # K < 4: no cross-validation, one fit at the median penalty (10) on all images
    X = rng.standard_normal((3, 4))
    Y = rng.standard_normal((3, 2))
    W, b, alphas = fit_ridge_paper(X, Y, return_alphas=True)
    assert np.all(alphas == 10.0)
    A = np.hstack([X, np.ones((3, 1))])
    theta = np.linalg.solve(A.T @ A + 10.0 * np.eye(5), A.T @ Y)
    assert np.allclose(W, theta[:4].T) and np.allclose(b, theta[4])
    W, b = fit_ridge_paper(X[:1], Y[:1])
    assert W.shape == (2, 4) and np.all(np.isfinite(W)) and np.all(np.isfinite(b))
    # a fold whose held-out responses are constant is left out of that voxel's mean, not NaN
    Yc = rng.standard_normal((20, 1))
    Yc[:4] = 1.0
    W, b = fit_ridge_paper(rng.standard_normal((20, 3)), Yc)
    assert np.all(np.isfinite(W)) and np.isfinite(b).all()
    with pytest.raises(ConfigError, match="empty"):
        fit_ridge_paper(np.zeros((0, 5)), np.zeros((0, 2)))
    with pytest.raises(ConfigError, match="positive"):
        fit_ridge_paper(X, Y, alphas=[0.0, 1.0])
    with pytest.raises(ConfigError, match="same K"):
        fit_ridge_paper(X, Y[:2])
