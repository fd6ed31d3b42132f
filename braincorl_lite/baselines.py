"""Baseline encoders that BraInCoRL is compared with.

* :func:`fit_ridge` — voxelwise ridge regression on the same K support images, with the penalty
  chosen per voxel by cross-validation (himalaya). With all of a subject's unique images this is
  the "fully trained" encoder (:func:`fully_trained`).
* :func:`anatomical_average` — zero-shot: average the encoders of training subjects at the same
  or neighbouring fsaverage vertices.
* :func:`bayes_oracle` — SimNSD only: the exact posterior mean of a voxel's weights given its
  support set, under the true mixture prior and the true noise. No estimator that sees only the
  voxel's support set can have a lower expected squared error, so it is the limit a meta-learned
  in-context model can approach.

Every encoder is returned as ``(W, b)`` with ``W`` of shape (n_voxels, n_features) and ``b`` of
shape (n_voxels,); :func:`predict_linear` turns it into responses.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["DEFAULT_ALPHAS", "fit_ridge", "fully_trained", "predict_linear", "ridge_closed_form",
           "anatomical_average", "bayes_oracle"]

#: penalties searched by the cross-validated ridge (features are unit-norm)
DEFAULT_ALPHAS = np.logspace(-2, 4, 13)


def _himalaya_backend():
    """Use himalaya's torch backend (on CUDA when present): several times faster than numpy."""
    import torch
    from himalaya.backend import get_backend, set_backend

    previous = get_backend()
    name = "torch_cuda" if torch.cuda.is_available() else "torch"
    set_backend(name, on_error="warn")
    return previous, set_backend


def predict_linear(features: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Responses of linear encoders: ``features @ W.T + b``, shape (n_images, n_voxels)."""
    return np.asarray(features, np.float64) @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)[None, :]


def ridge_closed_form(X: np.ndarray, Y: np.ndarray, alpha: float) -> Tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept at one fixed penalty, by the normal equations.

    A reference implementation used to check :func:`fit_ridge`.
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    xm, ym = X.mean(0), Y.mean(0)
    Xc, Yc = X - xm, Y - ym
    W = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ Yc).T
    return W, ym - W @ xm


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
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    K = X.shape[0]
    if K < 1:
        raise ValueError("the support set is empty: ridge needs at least one image")
    if K == 1:  # nothing to regress on: the best linear guess is the constant response
        W = np.zeros((Y.shape[1], X.shape[1]))
        out = (W, Y[0].copy())
        return out + (np.full(Y.shape[1], np.inf),) if return_alphas else out
    if K < 4:
        alpha = float(np.median(alphas))
        W, b = ridge_closed_form(X, Y, alpha)
        return (W, b, np.full(Y.shape[1], alpha)) if return_alphas else (W, b)
    previous, set_backend = _himalaya_backend()
    try:
        if K < X.shape[1]:
            # fewer images than features: the kernel (dual) form is the same ridge, and cheaper
            model = KernelRidgeCV(alphas=np.asarray(alphas, float), cv=min(cv, K), kernel="linear",
                                  fit_intercept=True)
            model.fit(X, Y)
            dual = _to_numpy(model.dual_coef_).astype(np.float64)
            W = (X - X.mean(0)).T @ dual
            W = W.T
        else:
            # batching the targets keeps the working set in cache: ~2x faster on CPU
            model = RidgeCV(alphas=np.asarray(alphas, float), cv=min(cv, K), fit_intercept=True,
                            solver_params=dict(n_targets_batch=512, n_targets_batch_refit=512))
            model.fit(X.astype(np.float32), Y.astype(np.float32))
            W = _to_numpy(model.coef_).astype(np.float64).T
        b = _to_numpy(model.intercept_).astype(np.float64).reshape(-1)
        best = _to_numpy(model.best_alphas_)
    finally:
        set_backend(previous)
    return (W, b, best) if return_alphas else (W, b)


def _to_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def fully_trained(data, alphas: Sequence[float] = DEFAULT_ALPHAS, cv: int = 5):
    """The "fully trained" encoder: ridge on all of the subject's unique images."""
    idx = data.unique_idx
    return fit_ridge(data.features[idx], data.betas[idx], alphas=alphas, cv=cv)


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
    from scipy.spatial import cKDTree

    if coords is None:
        from .simulate import fsaverage5_mesh

        coords = fsaverage5_mesh()[0]
    coords = np.asarray(coords, float).copy()
    half = len(coords) // 2
    coords[half:, 0] += 1e4  # keep the hemispheres apart
    target_vertex = np.asarray(target_vertex)
    if np.any(target_vertex < 0):
        raise ValueError("anatomical_average needs surface vertices; volumetric voxels (vertex -1) have none")
    n_feat = train[0][1].shape[1]
    W_sum = np.zeros((len(target_vertex), n_feat))
    b_sum = np.zeros(len(target_vertex))
    count = np.zeros(len(target_vertex))
    tpos = coords[target_vertex]
    for vertex, W, b in train:
        tree = cKDTree(coords[np.asarray(vertex)])
        hits = tree.query_ball_point(tpos, r=radius)
        _, nearest = tree.query(tpos, k=1)
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

    For each component we whiten with ``S_c = L L^T`` and take one SVD of ``Phi L`` (Phi = [X, 1]),
    which serves every voxel at once whatever its noise level, so the cost is a few matrix
    products for thousands of voxels.

    Parameters
    ----------
    support_x : ndarray (K, E)
    support_y : ndarray (K, n_voxels)
    prior : MixturePrior
        Uses ``prior.means``, ``prior.covs`` and ``prior.weights`` as given (call
        ``prior.marginal(...)`` first to integrate out subject offsets).
    noise_var : ndarray (n_voxels,)
        Variance of each voxel's measurement around ``x . w + b`` (for SimNSD averaged betas:
        ``truth.effective_noise_var(n_repeats)``).

    Returns
    -------
    W : ndarray (n_voxels, E), b : ndarray (n_voxels,)
    responsibilities : ndarray (n_voxels, n_components), only if requested
    """
    X = np.asarray(support_x, np.float64)
    Y = np.asarray(support_y, np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    K, E = X.shape
    if K < 1:
        raise ValueError("the support set is empty")
    nv = np.broadcast_to(np.asarray(noise_var, np.float64), (Y.shape[1],))
    Phi = np.hstack([X, np.ones((K, 1))])
    P = E + 1
    C = prior.n_components
    loglik = np.empty((C, Y.shape[1]))
    post = np.empty((C, P, Y.shape[1]))
    for c in range(C):
        S = prior.covs[c]
        L = np.linalg.cholesky(S + 1e-12 * np.trace(S) / P * np.eye(P))
        M = Phi @ L
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
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
    logp -= logp.max(0, keepdims=True)
    resp = np.exp(logp)
    resp /= resp.sum(0, keepdims=True)
    theta = np.einsum("cv,cpv->vp", resp, post)
    W, b = theta[:, :E], theta[:, E]
    if return_responsibilities:
        return W, b, resp.T
    return W, b
