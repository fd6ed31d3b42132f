"""The tasks of meta-training: where each step's voxels, images and targets come from.

A task is one voxel: K support images with its responses, and a target, either query images with
its responses (query loss) or its known encoder (population loss). One step draws one set of
support images and B voxels that all see them, so one forward pass trains B tasks.

* :class:`GaussianVoxels`: synthetic voxels from a Gaussian prior over encoders (stages 1-2), from
  measured data (:func:`measured_prior`) or, in the truth ablation, true encoders (:func:`truth_prior`).
* :class:`SubjectVoxels`: the training subjects' own voxels (stage 3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import numpy as np
import torch

from .data import SubjectData
from .errors import ConfigError

__all__ = ["fit_gaussian", "strip_truth", "measured_prior", "truth_prior", "GaussianVoxels", "SubjectVoxels",
           "population_loss", "query_loss"]


# ------------------------------------------------------------------------------------- priors
def fit_gaussian(theta: np.ndarray, shrink: float = 1e-3):
    """Mean and covariance of voxel parameters ``theta`` (n_voxels, E + 1), lightly shrunk."""
    theta = np.asarray(theta, np.float64)
    cov = np.cov(theta, rowvar=False)
    cov += shrink * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return theta.mean(0), cov


def strip_truth(subjects: Sequence[SubjectData]) -> List[SubjectData]:
    """Copies of ``subjects`` without their ground truth: what an experimenter has."""
    return [replace(s, truth=None) for s in subjects]


def measured_prior(subjects: Sequence[SubjectData], encoders=None):
    """The synthetic stages' prior from measured data only.

    Parameters
    ----------
    subjects : sequence of SubjectData
        Training subjects (their ``truth`` is never read).
    encoders : list of (W, b), optional
        Fully trained encoders of ``subjects``, one per subject; fitted here with
        :func:`~braincorl_lite.baselines.fully_trained` when omitted.

    Returns
    -------
    mean, cov : ndarray
        Gaussian over ``[w, b]`` fitted to the fully trained encoders (:func:`fit_gaussian`).
    noise_var : ndarray
        Per-voxel noise variance of the averaged betas, ``Var(beta) * (1 - noise_ceiling)``.
    """
    from .baselines import fully_trained

    if encoders is None:
        encoders = [fully_trained(s) for s in subjects]
    if len(encoders) != len(subjects):
        raise ConfigError(f"need one (W, b) per training subject: got {len(encoders)} for {len(subjects)}")
    mean, cov = fit_gaussian(np.vstack([np.hstack([W, np.asarray(b)[:, None]]) for W, b in encoders]))
    noise_var = np.concatenate([s.betas[s.unique_idx].var(0).astype(np.float64) * (1 - s.noise_ceiling)
                                for s in subjects])
    return mean, cov, noise_var


def truth_prior(subjects: Sequence[SubjectData]):
    """The privileged prior (ablation only): the true weights and true noise of the subjects."""
    if any(s.truth is None for s in subjects):
        raise ConfigError("supervision='truth' needs simulated subjects with ground truth; "
                          "real data can only be trained with supervision='measured'")
    mean, cov = fit_gaussian(np.vstack([np.hstack([s.truth.weights, s.truth.bias[:, None]]) for s in subjects]))
    return mean, cov, np.concatenate([s.truth.effective_noise_var(s.n_repeats) for s in subjects])


# ------------------------------------------------------------------------------- task sources
@dataclass
class _Batch:
    """One training step's tasks (tensors on the training device)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    theta: Optional[torch.Tensor] = None
    norm: Optional[torch.Tensor] = None
    query_x: Optional[torch.Tensor] = None
    query_y: Optional[torch.Tensor] = None

    def shard(self, rank: int, world: int) -> "_Batch":
        """This rank's share of the voxels (every rank drew the same episode)."""
        pick = lambda t: None if t is None else t[rank::world]  # noqa: E731
        return _Batch(self.support_x, pick(self.support_y), pick(self.theta), pick(self.norm),
                      self.query_x, pick(self.query_y))


def _second_moment(x: torch.Tensor) -> torch.Tensor:
    """``M = E[phi phi^T]`` with ``phi = [x, 1]`` over the images ``x``."""
    phi = torch.cat([x, torch.ones(len(x), 1, device=x.device, dtype=x.dtype)], 1)
    return phi.T @ phi / len(phi)


class GaussianVoxels:
    """Synthetic voxels: ``theta ~ N(mean, cov)``, responses ``[x, 1] . theta + N(0, noise_var)``.

    Parameters
    ----------
    features : ndarray (n_images, E)
        The image pool support and query images are drawn from.
    mean, cov : ndarray (E + 1,), (E + 1, E + 1)
        Gaussian over voxel parameters (see :func:`fit_gaussian`).
    noise_var : ndarray
        Noise variances to draw from (e.g. the training voxels' ones).
    """

    def __init__(self, features, mean, cov, noise_var, device="cpu", seed=0):
        self.device = torch.device(device)
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        self.x, self.mean, self.noise_var = as_t(features), as_t(mean), as_t(noise_var)
        self.chol = as_t(np.linalg.cholesky(np.asarray(cov, np.float64)))
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.M = _second_moment(self.x)
        self.cov_x = torch.cov(self.x.T)

    def sample(self, batch: int, k: int, n_query: int = 0) -> _Batch:
        g, dev = self.gen, self.device
        idx = torch.randperm(len(self.x), generator=g, device=dev)[: k + n_query]
        xs = self.x[idx[:k]]
        theta = self.mean + torch.randn(batch, self.chol.shape[0], generator=g, device=dev) @ self.chol.T
        nv = self.noise_var[torch.randint(len(self.noise_var), (batch,), generator=g, device=dev)]
        w, b = theta[:, :-1], theta[:, -1]
        y = (xs @ w.T + b).T + torch.randn(batch, k, generator=g, device=dev) * nv.sqrt()[:, None]
        norm = torch.einsum("bi,ij,bj->b", w, self.cov_x, w) + nv
        qx = qy = None
        if n_query:
            qx = self.x[idx[k:]]
            qy = (qx @ w.T + b).T + torch.randn(batch, n_query, generator=g, device=dev) * nv.sqrt()[:, None]
        return _Batch(xs, y, theta, norm, qx, qy)


class SubjectVoxels:
    """The training subjects' own voxels.

    Support images come from a subject's unique images; query images from its other unique
    images, disjoint from the support (the shared images, used for evaluation, are never drawn).
    ``theta`` (the target of the population loss) is the ground truth when ``use_truth`` and the
    subjects carry it; measured voxels have none.
    """

    def __init__(self, subjects: Sequence[SubjectData], device="cpu", seed=0, use_truth: bool = False):
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.subjects = []
        for s in subjects:
            e = {"x": torch.as_tensor(s.features[s.unique_idx], device=self.device),
                 "y": torch.as_tensor(s.betas[s.unique_idx], device=self.device)}
            if use_truth and s.truth is not None:
                theta = np.hstack([s.truth.weights, s.truth.bias[:, None]])
                e["theta"] = torch.as_tensor(theta, dtype=torch.float32, device=self.device)
            e["var"] = e["y"].var(0)
            self.subjects.append(e)
        self.M = _second_moment(torch.cat([e["x"] for e in self.subjects]))

    def sample(self, batch: int, k: int, n_query: int = 0) -> _Batch:
        g, dev = self.gen, self.device
        e = self.subjects[int(torch.randint(len(self.subjects), (1,), generator=g, device=dev))]
        n_img, n_vox = e["y"].shape
        idx = torch.randperm(n_img, generator=g, device=dev)[: k + n_query]
        vox = torch.randperm(n_vox, generator=g, device=dev)[:batch]
        qx = e["x"][idx[k:]] if n_query else None
        qy = e["y"][idx[k:]][:, vox].T if n_query else None
        return _Batch(e["x"][idx[:k]], e["y"][idx[:k]][:, vox].T, e["theta"][vox] if "theta" in e else None,
                      e["var"][vox], qx, qy)


# ------------------------------------------------------------------------------------- losses
def population_loss(hw: torch.Tensor, theta: torch.Tensor, M: torch.Tensor, norm: torch.Tensor):
    """Mean over voxels of ``(hw - theta)^T M (hw - theta) / norm``."""
    d = hw - theta
    return (torch.einsum("bi,ij,bj->b", d, M, d) / norm.clamp_min(1e-6)).mean()


def query_loss(hw: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor, norm: torch.Tensor):
    """Mean over voxels of the query-set MSE divided by ``norm``."""
    pred = hw[:, :-1] @ query_x.T + hw[:, -1:]  # (voxels, queries)
    return (((pred - query_y) ** 2).mean(1) / norm.clamp_min(1e-6)).mean()
