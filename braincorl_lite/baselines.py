"""Baseline encoders that BraInCoRL is compared with.

* :func:`fit_ridge` — voxelwise ridge regression on the same K support images, with the penalty
  chosen per voxel by cross-validation (himalaya). With all of a subject's unique images this is
  the "fully trained" encoder (:func:`fully_trained`).
* :func:`fit_ridge_paper` — the official BraInCoRL ridge baseline, reproduced.
* :func:`anatomical_average` — zero-shot: average the encoders of training subjects at the same
  or neighbouring fsaverage vertices.
* :func:`bayes_oracle` — SimNSD only: the exact posterior mean of a voxel's weights given its
  support set, under the true mixture prior and the true noise. No estimator that sees only the
  voxel's support set has a lower expected squared error: it is the limit a meta-learned
  in-context model can approach.

Every encoder is ``(W, b)`` with ``W`` of shape (n_voxels, n_features) and ``b`` of shape
(n_voxels,); :func:`predict_linear` turns it into responses (n_images, n_voxels).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError

__all__ = ["DEFAULT_ALPHAS", "PAPER_ALPHAS", "fit_ridge", "fit_ridge_paper", "fully_trained", "predict_linear",
           "ridge_closed_form", "anatomical_average", "bayes_oracle"]

#: penalties searched by the cross-validated ridge, 13 log-spaced from 1e-2 to 1e4 (features are
#: unit-norm)
#:
#: :meta hide-value:
DEFAULT_ALPHAS = np.logspace(-2, 4, 13)

#: penalties of the official BraInCoRL ridge baseline (1e-3, 1e-2, ..., 1e5)
PAPER_ALPHAS = 10.0 ** np.arange(-3, 6)


def predict_linear(features: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Responses of linear encoders: ``features @ W.T + b``, shape (n_images, n_voxels).

    >>> predict_linear(np.eye(2), np.array([[1.0, 2.0]]), np.array([0.5]))
    array([[1.5],
           [2.5]])
    """
    return np.asarray(features, np.float64) @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)[None, :]


def ridge_closed_form(X: np.ndarray, Y: np.ndarray, alpha: float) -> Tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept at one fixed penalty, by the normal equations.

    A reference implementation used to check :func:`fit_ridge`.
    """
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    xm, ym = X.mean(0), Y.mean(0)
    Xc, Yc = X - xm, Y - ym
    W = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ Yc).T
    return W, ym - W @ xm


def _to_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _as_2d(X, Y):
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    return X, (Y[:, None] if Y.ndim == 1 else Y)


def fit_ridge(X: np.ndarray, Y: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS, cv: int = 5,
              return_alphas: bool = False):
    """Voxelwise ridge regression with a cross-validated penalty per voxel (himalaya).

    Parameters
    ----------
    X : ndarray (K, n_features)
        Support image features.
    Y : ndarray (K, n_voxels)
        Support responses.
    alphas : sequence of float
        Candidate penalties; each voxel gets the one with the best cross-validated score.
    cv : int
        Number of folds (reduced when K is small; K < 4 falls back to the median penalty).

    Returns
    -------
    W : ndarray (n_voxels, n_features)
    b : ndarray (n_voxels,)
    best_alphas : ndarray (n_voxels,), only if ``return_alphas``

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 5)); W_true = rng.standard_normal((3, 5))
    >>> W, b = fit_ridge(X, X @ W_true.T)
    >>> np.allclose(W, W_true, atol=0.05)
    True
    """
    from himalaya.backend import get_backend, set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    from ._device import resolve_device

    X, Y = _as_2d(X, Y)
    K = X.shape[0]
    if K < 1:
        raise ValueError("the support set is empty: ridge needs at least one image")
    if K == 1:  # nothing to regress on: the best linear guess is the constant response
        out = (np.zeros((Y.shape[1], X.shape[1])), Y[0].copy())
        return out + (np.full(Y.shape[1], np.inf),) if return_alphas else out
    if K < 4:
        alpha = float(np.median(alphas))
        W, b = ridge_closed_form(X, Y, alpha)
        return (W, b, np.full(Y.shape[1], alpha)) if return_alphas else (W, b)
    # himalaya's torch backend (on CUDA when present) is several times faster than numpy
    previous = get_backend()
    set_backend("torch_cuda" if resolve_device("auto") == "cuda" else "torch", on_error="warn")
    try:
        if K < X.shape[1]:  # fewer images than features: the kernel (dual) form is the same ridge, and cheaper
            model = KernelRidgeCV(alphas=np.asarray(alphas, float), cv=min(cv, K), kernel="linear",
                                  fit_intercept=True)
            model.fit(X, Y)
            W = ((X - X.mean(0)).T @ _to_numpy(model.dual_coef_).astype(np.float64)).T
        else:  # batching the targets keeps the working set in cache: ~2x faster on CPU
            model = RidgeCV(alphas=np.asarray(alphas, float), cv=min(cv, K), fit_intercept=True,
                            solver_params=dict(n_targets_batch=512, n_targets_batch_refit=512))
            model.fit(X.astype(np.float32), Y.astype(np.float32))
            W = _to_numpy(model.coef_).astype(np.float64).T
        b = _to_numpy(model.intercept_).astype(np.float64).reshape(-1)
        best = _to_numpy(model.best_alphas_)
    finally:
        set_backend(previous)
    return (W, b, best) if return_alphas else (W, b)


def _spectral_ridge(A: np.ndarray, Y: np.ndarray):
    """One eigen-decomposition of a design that serves ridge at every penalty and every voxel.

    Returns ``(V, d, Z)``: the ridge solution of ``A theta = Y`` at penalty ``lam`` (every
    column penalised) is ``V @ (Z / (d + lam)[:, None])``. With fewer rows than columns the
    kernel matrix ``A A^T`` is decomposed instead (cost ``min(n, P)`` cubed); directions of
    zero eigenvalue carry no signal and are dropped.
    """
    n, P = A.shape
    if n >= P:  # primal: Gram matrix of the features
        d, V = np.linalg.eigh(A.T @ A)
        d = np.clip(d, 0.0, None)
        return V, d, V.T @ (A.T @ Y)
    d, U = np.linalg.eigh(A @ A.T)  # dual: kernel matrix of the images
    keep = d > max(d.max(), 0.0) * n * np.finfo(float).eps
    d, U = d[keep], U[:, keep]
    s = np.sqrt(d)
    return (A.T @ U) / s[None, :], d, s[:, None] * (U.T @ Y)


def fit_ridge_paper(X: np.ndarray, Y: np.ndarray, alphas: Sequence[float] = PAPER_ALPHAS, n_folds: int = 5,
                    return_alphas: bool = False):
    """Voxelwise ridge exactly as the official BraInCoRL baseline (``ridge_fast_brainwise``) fits it.

    * a column of ones is appended to ``X`` and penalised with the weights (the intercept is
      shrunk too, unlike :func:`fit_ridge`);
    * ``n_folds`` *sequential* folds: fold ``f`` holds out images ``[f * s, (f + 1) * s)``,
      ``s = K // n_folds`` (no shuffling; the last ``K % n_folds`` images always train);
    * per voxel, the penalty with the best held-out explained variance averaged over folds
      (ties go to the first penalty in ``alphas``);
    * the encoder is the **mean of the fold models** at that penalty (no refit).

    Each held-out fold needs 2 images, so with ``K < 2 * n_folds`` there are ``K // 2`` folds;
    with ``K < 4`` one fit on all images at the median penalty. A fold whose held-out responses
    are constant is left out of that voxel's mean.

    Parameters
    ----------
    X : ndarray (K, n_features)
        Support image features, in the order that defines the folds.
    Y : ndarray (K, n_voxels) or (K,)
        Support responses.
    alphas : sequence of float
        Candidate penalties (all positive).
    n_folds : int
        Number of sequential folds (5 in the official code).
    return_alphas : bool
        Also return the penalty chosen for each voxel.

    Returns
    -------
    W : ndarray (n_voxels, n_features), b : ndarray (n_voxels,), best_alphas (if ``return_alphas``)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 5)); W_true = rng.standard_normal((3, 5))
    >>> W, b = fit_ridge_paper(X, X @ W_true.T + 1.0)
    >>> bool(np.allclose(W, W_true, atol=1e-3) and np.allclose(b, 1.0, atol=1e-3))
    True
    """
    X, Y = _as_2d(X, Y)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ConfigError(f"X must be (K, n_features) and Y (K, n_voxels) with the same K, got {X.shape} and {Y.shape}")
    alphas = np.asarray(alphas, np.float64).reshape(-1)
    if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ConfigError(f"the penalties must be positive and finite, got {alphas.tolist()}")
    if int(n_folds) < 2:
        raise ConfigError(f"n_folds must be at least 2, got {n_folds}")
    (K, E), nv = X.shape, Y.shape[1]
    if K < 1:
        raise ConfigError("the support set is empty: ridge needs at least one image")
    A = np.hstack([X, np.ones((K, 1))])
    n_folds = min(int(n_folds), K // 2)
    if n_folds < 2:  # K < 4: no cross-validation possible, one fit at the median penalty
        alpha = float(np.median(alphas))
        V, d, Z = _spectral_ridge(A, Y)
        theta = V @ (Z / (d + alpha)[:, None])
        return (theta[:E].T, theta[E].copy()) + ((np.full(nv, alpha),) if return_alphas else ())
    size = K // n_folds
    score, count = np.zeros((len(alphas), nv)), np.zeros((len(alphas), nv))
    fits = []
    for lo, hi in [(f * size, (f + 1) * size) for f in range(n_folds)]:
        train = np.r_[0:lo, hi:K]
        V, d, Z = _spectral_ridge(A[train], Y[train])
        fits.append((V, d, Z))
        y_te, P_te = Y[lo:hi], A[lo:hi] @ V
        var_y = y_te.var(axis=0)
        ok = var_y > 0
        for j, lam in enumerate(alphas):
            with np.errstate(divide="ignore", invalid="ignore"):
                ev = 1.0 - (y_te - P_te @ (Z / (d + lam)[:, None])).var(axis=0) / var_y
            score[j] += np.where(ok, ev, 0.0)
            count[j] += ok
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_ev = np.where(count > 0, score / count, -np.inf)
    lam_v = alphas[np.argmax(np.where(np.isnan(mean_ev), -np.inf, mean_ev), axis=0)]  # first maximum on ties
    theta = sum(V @ (Z / (d[:, None] + lam_v[None, :])) for V, d, Z in fits) / len(fits)
    W, b = theta[:E].T.copy(), theta[E].copy()
    return (W, b, lam_v) if return_alphas else (W, b)


def fully_trained(data, alphas: Sequence[float] = DEFAULT_ALPHAS, cv: int = 5):
    """The "fully trained" encoder: ridge on all of the subject's unique images."""
    idx = data.unique_idx
    return fit_ridge(data.features[idx], data.betas[idx], alphas=alphas, cv=cv)


def _neighbours(source_vertex, target_vertex, radius: float, coords=None):
    """Per target vertex: the source voxels within ``radius`` mm (same hemisphere), and the nearest one."""
    from scipy.spatial import cKDTree

    if coords is None:
        from .cortex import fsaverage5_mesh

        coords = fsaverage5_mesh()[0]
    coords = np.asarray(coords, float).copy()
    coords[len(coords) // 2:, 0] += 1e4  # keep the hemispheres apart
    tree, target = cKDTree(coords[np.asarray(source_vertex)]), coords[np.asarray(target_vertex)]
    return tree.query_ball_point(target, r=radius), np.atleast_1d(tree.query(target, k=1)[1]).astype(int)


def anatomical_average(train: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]], target_vertex: np.ndarray,
                       radius: float = 6.0, coords: Optional[np.ndarray] = None):
    """Zero-shot encoders from other subjects' encoders at the same or nearby cortical vertices.

    Parameters
    ----------
    train : sequence of (vertex, W, b)
        For each training subject: the fsaverage5 vertex id of each voxel and its encoder
        (usually the fully trained one).
    target_vertex : ndarray of int (n_voxels,)
        Vertex ids of the new subject's voxels.
    radius : float
        Voxels of the training subjects within this distance (mm, on the pial surface, same
        hemisphere) are averaged; a target with none in reach takes the nearest one of each
        training subject.
    coords : ndarray (20484, 3), optional
        Vertex coordinates; fsaverage5 pial by default.

    Returns
    -------
    W : ndarray (n_voxels, n_features), b : ndarray (n_voxels,)
    """
    target_vertex = np.asarray(target_vertex)
    if np.any(target_vertex < 0):
        raise ValueError("anatomical_average needs surface vertices; volumetric voxels (vertex -1) have none")
    W_sum = np.zeros((len(target_vertex), train[0][1].shape[1]))
    b_sum, count = np.zeros(len(target_vertex)), np.zeros(len(target_vertex))
    for vertex, W, b in train:
        hits, nearest = _neighbours(vertex, target_vertex, radius, coords)
        for i, h in enumerate(hits):
            h = h if len(h) else [nearest[i]]
            W_sum[i] += W[h].sum(0)
            b_sum[i] += b[h].sum()
            count[i] += len(h)
    return W_sum / count[:, None], b_sum / count


def bayes_oracle(support_x: np.ndarray, support_y: np.ndarray, prior, noise_var: np.ndarray,
                 return_responsibilities: bool = False):
    """Exact posterior mean of voxel parameters under a Gaussian-mixture prior.

    Model: ``theta = [w; b] ~ sum_c pi_c N(mu_c, S_c)`` and ``y_i = [x_i, 1] . theta + e_i`` with
    ``e_i ~ N(0, noise_var)`` (known, one value per voxel). The posterior is again a mixture; its
    mean is ``sum_c p(c | data) m_c``, with ``m_c`` the Gaussian posterior mean of component c.
    Whitening with ``S_c = L L^T`` and one SVD of ``Phi L`` (``Phi = [X, 1]``) per component serve
    every voxel at once, whatever its noise level.

    Parameters
    ----------
    support_x : ndarray (K, E)
    support_y : ndarray (K, n_voxels)
    prior : MixturePrior
        Uses ``means``, ``covs`` and ``weights`` as given (call ``prior.marginal(...)`` first to
        integrate out subject offsets).
    noise_var : ndarray (n_voxels,)
        Variance of each voxel's measurement around ``x . w + b`` (for SimNSD averaged betas:
        ``truth.effective_noise_var(n_repeats)``).

    Returns
    -------
    W : ndarray (n_voxels, E), b : ndarray (n_voxels,)
    responsibilities : ndarray (n_voxels, n_components), only if requested
    """
    X, Y = _as_2d(support_x, support_y)
    K, E = X.shape
    if K < 1:
        raise ValueError("the support set is empty")
    nv = np.broadcast_to(np.asarray(noise_var, np.float64), (Y.shape[1],))
    Phi = np.hstack([X, np.ones((K, 1))])
    chol = prior.cholesky("covs")
    loglik = np.empty((prior.n_components, Y.shape[1]))
    post = np.empty((prior.n_components, E + 1, Y.shape[1]))
    for c, L in enumerate(chol):
        U, s, Vt = np.linalg.svd(Phi @ L, full_matrices=False)
        R = Y - (Phi @ prior.means[c])[:, None]
        A = U.T @ R
        denom = s[:, None] ** 2 + nv[None, :]
        resid_out = np.clip((R ** 2).sum(0) - (A ** 2).sum(0), 0, None)
        quad = resid_out / nv + (A ** 2 / denom).sum(0)
        logdet = np.log(denom).sum(0) + (K - len(s)) * np.log(nv)
        loglik[c] = -0.5 * (quad + logdet + K * np.log(2 * np.pi))
        post[c] = prior.means[c][:, None] + L @ (Vt.T @ (s[:, None] / denom * A))
    with np.errstate(divide="ignore"):
        logp = loglik + np.log(np.asarray(prior.weights))[:, None]
    resp = np.exp(logp - logp.max(0, keepdims=True))
    resp /= resp.sum(0, keepdims=True)
    theta = np.einsum("cv,cpv->vp", resp, post)
    W, b = theta[:, :E], theta[:, E]
    return (W, b, resp.T) if return_responsibilities else (W, b)
