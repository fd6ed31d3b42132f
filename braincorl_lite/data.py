"""The one per-subject data container shared by SimNSD and real NSD, and the episode sampler.

Every analysis takes a :class:`SubjectData`, from :func:`braincorl_lite.simulate.simulate_simnsd`
(with ground truth) or :func:`braincorl_lite.nsd.prepare_subject` (real NSD, no ground truth):

* ``features``: unit-norm (L2) image embeddings, one row per image;
* ``betas``: responses averaged over repeats, ``(n_images, n_voxels)``;
* ``shared_mask``: the images every subject saw (NSD's 1,000 shared images), the query set of the
  paper's evaluation; support sets come from the other, unique, images;
* ``noise_ceiling``: the stimulus-driven share of the variance of the averaged betas, in [0, 1]
  (NSD's noise ceiling divided by 100).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional

import numpy as np

__all__ = ["GroundTruth", "SubjectData", "SubjectCollection", "Episode", "EpisodeSampler", "check_support",
           "save_subject", "load_subject", "atomic_write"]

#: tolerance on the L2 norm of each feature row
UNIT_NORM_TOL = 1e-3


@dataclass
class GroundTruth:
    """What generated a simulated subject's responses (SimNSD only).

    Attributes
    ----------
    weights : ndarray (n_voxels, n_features)
        True linear encoding weights; ``bias`` (n_voxels,) the true intercepts.
    noise_sd : ndarray (n_voxels,)
        Standard deviation of the single-trial measurement noise.
    component : ndarray of int (n_voxels,)
        Mixture component of each voxel (names in ``SubjectData.meta["components"]``).
    unexplained_sd : ndarray (n_voxels,), optional
        Standard deviation of the stimulus-driven response that is not linear in the features:
        inside the noise ceiling, out of reach of any linear encoder. Zeros when absent.
    """

    weights: np.ndarray
    bias: np.ndarray
    noise_sd: np.ndarray
    component: np.ndarray
    unexplained_sd: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.unexplained_sd is None:
            self.unexplained_sd = np.zeros_like(self.noise_sd)

    def effective_noise_var(self, n_repeats: int) -> np.ndarray:
        """Variance of an averaged beta around ``x . w + b``: noise / n_repeats + unexplained."""
        return self.noise_sd.astype(np.float64) ** 2 / n_repeats + self.unexplained_sd.astype(np.float64) ** 2

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Noise-free responses ``features @ weights.T + bias``, shape (n_images, n_voxels)."""
        from .baselines import predict_linear

        return predict_linear(features, self.weights, self.bias)

    def select(self, idx) -> "GroundTruth":
        """The ground truth of the voxels ``idx``."""
        return GroundTruth(self.weights[idx], self.bias[idx], self.noise_sd[idx], self.component[idx],
                           self.unexplained_sd[idx])


@dataclass
class SubjectData:
    """One subject of an NSD-like experiment, simulated or real.

    Parameters
    ----------
    subject : str
        Subject name, e.g. ``"simnsd-01"`` or ``"subj01"``.
    features : ndarray (n_images, n_features)
        Unit-norm image embeddings.
    betas : ndarray (n_images, n_voxels)
        Responses averaged over ``n_repeats`` presentations.
    image_ids, shared_mask : ndarray (n_images,)
        Dataset-wide image ids (NSD: 0-based index into the 73k images); True for the images
        shared by all subjects (the query images).
    roi, vertex, noise_ceiling : ndarray (n_voxels,)
        ROI label (``"other"`` outside the named ROIs); fsaverage5 vertex id (0..10241 left,
        10242..20483 right, -1 for a volumetric voxel); noise ceiling as a fraction.
    n_repeats : int
        Number of presentations averaged into each beta.
    captions : ndarray of str (n_images,), optional
        SimNSD's captions, or NSD's COCO captions when prepared.
    truth : GroundTruth, optional
        Only for simulated data.
    meta : dict
        JSON-serialisable provenance (dataset name, seeds, units).
    voxel_info, image_info : dict of ndarray, optional
        Extra arrays with one row per voxel / per image (prepared NSD: voxel ``ijk``, NSD ROI
        labels, ncsnr; repeats and COCO ids), saved with the container and sliced with it.
    """

    subject: str
    features: np.ndarray
    betas: np.ndarray
    image_ids: np.ndarray
    shared_mask: np.ndarray
    roi: np.ndarray
    vertex: np.ndarray
    noise_ceiling: np.ndarray
    n_repeats: int = 3
    captions: Optional[np.ndarray] = None
    truth: Optional[GroundTruth] = None
    meta: dict = field(default_factory=dict)
    voxel_info: dict = field(default_factory=dict)
    image_info: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, dtype in (("features", np.float32), ("betas", np.float32), ("image_ids", np.int64),
                            ("shared_mask", bool), ("vertex", np.int64), ("noise_ceiling", np.float32)):
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        self.roi = np.asarray(self.roi).astype(str)
        if self.captions is not None:
            self.captions = np.asarray(self.captions).astype(str)
        self.voxel_info = {k: np.asarray(v) for k, v in self.voxel_info.items()}
        self.image_info = {k: np.asarray(v) for k, v in self.image_info.items()}
        self.validate()

    n_images = property(lambda self: self.features.shape[0])
    n_voxels = property(lambda self: self.betas.shape[1])
    n_features = property(lambda self: self.features.shape[1])

    @property
    def unique_idx(self) -> np.ndarray:
        """Row indices of the subject's unique images (the support pool)."""
        return np.flatnonzero(~self.shared_mask)

    @property
    def shared_idx(self) -> np.ndarray:
        """Row indices of the shared images (the query set)."""
        return np.flatnonzero(self.shared_mask)

    @property
    def roi_names(self) -> list:
        """ROI labels present, in order of first appearance with ``"other"`` last."""
        names = list(dict.fromkeys(self.roi.tolist()))
        return [n for n in names if n != "other"] + (["other"] if "other" in names else [])

    @property
    def is_simulated(self) -> bool:
        return self.truth is not None or str(self.meta.get("dataset", "")).startswith("sim")

    def validate(self) -> None:
        """Check shapes, finiteness and unit-norm features; raise ``ValueError`` with a reason."""
        if self.features.ndim != 2:
            raise ValueError(f"features must be 2-D (n_images, n_features), got shape {self.features.shape}")
        if self.betas.ndim != 2:
            raise ValueError(f"betas must be 2-D (n_images, n_voxels), got shape {self.betas.shape}")
        (n_img, n_vox), E = self.betas.shape, self.features.shape[1]
        if self.features.shape[0] != n_img:
            raise ValueError(f"features have {self.features.shape[0]} images but betas have {n_img}: "
                             "rows of features and betas must be the same images")
        per_image = {"image_ids": self.image_ids, "shared_mask": self.shared_mask, "captions": self.captions}
        per_voxel = {"roi": self.roi, "vertex": self.vertex, "noise_ceiling": self.noise_ceiling}
        if self.truth is not None:
            per_voxel.update({f"truth.{k}": getattr(self.truth, k)
                              for k in ("bias", "noise_sd", "component", "unexplained_sd")})
            if self.truth.weights.shape != (n_vox, E):
                raise ValueError(f"truth.weights must have shape ({n_vox}, {E}), got {self.truth.weights.shape}")
        for names, n, what in ((per_image, n_img, "one per image"), (per_voxel, n_vox, "one per voxel")):
            for name, arr in names.items():
                if arr is not None and arr.shape != (n,):
                    raise ValueError(f"{name} must have shape ({n},) ({what}), got {arr.shape}")
        for name, info, n in (("voxel_info", self.voxel_info, n_vox), ("image_info", self.image_info, n_img)):
            for key, arr in info.items():
                if arr.shape[:1] != (n,):
                    raise ValueError(f"{name}[{key!r}] must have {n} rows, got shape {arr.shape}")
        if len(np.unique(self.image_ids)) != n_img:
            raise ValueError("image_ids contain duplicates: average repeats before building the container")
        if not np.all(np.isfinite(self.features)):
            raise ValueError("features contain NaN or infinite values")
        bad = np.flatnonzero(~np.isfinite(self.betas).all(axis=0))
        if bad.size:
            raise ValueError(f"betas contain NaN or infinite values in {bad.size} voxel(s) (first: {bad[:5].tolist()}); "
                             "drop or impute those voxels before building the container")
        norms = np.linalg.norm(self.features, axis=1)
        off = np.abs(norms - 1.0) > UNIT_NORM_TOL
        if off.any():
            raise ValueError(f"features must be unit-norm (L2): {off.sum()} of {n_img} rows are not "
                             f"(norms from {norms.min():.4f} to {norms.max():.4f}); divide each row by its norm")
        if not np.all(np.isfinite(self.noise_ceiling)):
            raise ValueError("noise_ceiling contains NaN or infinite values")
        if self.n_repeats < 1:
            raise ValueError(f"n_repeats must be >= 1, got {self.n_repeats}")

    def select_voxels(self, idx) -> "SubjectData":
        """A new container restricted to the voxels ``idx`` (indices or boolean mask)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(self, betas=self.betas[:, idx], roi=self.roi[idx], vertex=self.vertex[idx],
                       noise_ceiling=self.noise_ceiling[idx], meta=dict(self.meta),
                       truth=None if self.truth is None else self.truth.select(idx),
                       voxel_info={k: v[idx] for k, v in self.voxel_info.items()})

    def __repr__(self) -> str:
        kind = "simulated" if self.is_simulated else "measured"
        return (f"SubjectData({self.subject!r}, {kind}: {self.n_images} images ({self.shared_mask.sum()} shared), "
                f"{self.n_voxels} voxels, {self.n_features}-d features, ROIs={self.roi_names})")


class SubjectCollection:
    """List-like access to the ``subjects`` attribute of a dataset (simulated or real)."""

    subjects: List[SubjectData]

    def __len__(self):
        return len(self.subjects)

    def __getitem__(self, i) -> SubjectData:
        return self.subjects[i]

    def __iter__(self):
        return iter(self.subjects)

    def summary(self):
        """A pandas table: one row per subject (voxels, unique and shared images, mean noise ceiling)."""
        import pandas as pd

        return pd.DataFrame([{"subject": s.subject, "voxels": s.n_voxels, "unique images": int(s.unique_idx.size),
                              "shared images": int(s.shared_idx.size),
                              "mean noise ceiling": float(s.noise_ceiling.mean())} for s in self.subjects])


def check_support(support_idx, data: SubjectData) -> np.ndarray:
    """Validate a support set (row indices into ``data``) and return it as an int array.

    Raises ``ValueError`` for an empty set, out-of-range or duplicated indices, or shared
    (query) images used as support.
    """
    support_idx = np.asarray(support_idx, dtype=np.int64).ravel()
    if support_idx.size == 0:
        raise ValueError("the support set is empty: give at least one (image, response) pair (K >= 1)")
    if support_idx.min() < 0 or support_idx.max() >= data.n_images:
        raise ValueError(f"support indices must lie in [0, {data.n_images}), got {support_idx.min()}..{support_idx.max()}")
    if len(np.unique(support_idx)) != support_idx.size:
        raise ValueError("the support set contains the same image twice")
    if data.shared_mask[support_idx].any():
        raise ValueError("the support set contains shared images; they are the query set and must stay held out")
    return support_idx


@contextmanager
def atomic_write(path, suffix: str = ".tmp"):
    """Write a file all at once or not at all: yield a temporary path next to ``path``, then rename it.

    The rename (``os.replace``) happens only when the ``with`` block succeeds; otherwise the
    temporary file is removed and ``path`` keeps its old content.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_write(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_ARRAYS = ("features", "betas", "image_ids", "shared_mask", "roi", "vertex", "noise_ceiling")
_TRUTH = ("weights", "bias", "noise_sd", "component", "unexplained_sd")


def save_subject(data: SubjectData, path) -> Path:
    """Save a container to one compressed ``.npz`` file (no pickle, atomic). Returns the path."""
    arrays = {name: getattr(data, name) for name in _ARRAYS}
    if data.captions is not None:
        arrays["captions"] = data.captions
    if data.truth is not None:
        arrays.update({f"truth_{name}": getattr(data.truth, name) for name in _TRUTH})
    for name in ("voxel_info", "image_info"):
        arrays.update({f"{name}__{k}": v for k, v in getattr(data, name).items()})
    header = {"subject": data.subject, "n_repeats": int(data.n_repeats), "meta": data.meta, "format": 1}
    arrays["header_json"] = np.array(json.dumps(header))
    with atomic_write(path, ".tmp.npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return Path(path)


def load_subject(path) -> SubjectData:
    """Load a container written by :func:`save_subject` (validated on load)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no subject file at {path}")
    with np.load(path, allow_pickle=False) as f:
        header = json.loads(str(f["header_json"]))
        kw = {name: f[name] for name in _ARRAYS}
        captions = f["captions"] if "captions" in f.files else None
        truth = GroundTruth(*(f[f"truth_{name}"] for name in _TRUTH)) if "truth_weights" in f.files else None
        info = {name: {k.split("__", 1)[1]: f[k] for k in f.files if k.startswith(name + "__")}
                for name in ("voxel_info", "image_info")}
    return SubjectData(subject=header["subject"], n_repeats=header["n_repeats"], meta=header["meta"],
                       captions=captions, truth=truth, **kw, **info)


@dataclass
class Episode:
    """A batch of tasks (one task = one voxel) that share the same support and query images.

    Responses are stored task-first, the way the model reads a batch of tasks.

    ``support_x`` (K, E) and ``query_x`` (Q, E) are image features; ``support_y`` (B, K) and
    ``query_y`` (B, Q) the responses of the B voxels ``voxels``; ``support_idx`` and
    ``query_idx`` the image rows in the subject.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    voxels: np.ndarray
    support_idx: np.ndarray
    query_idx: np.ndarray

    @property
    def k(self) -> int:
        return self.support_x.shape[0]


class EpisodeSampler:
    """Draw in-context tasks from one subject: support from unique images, query from shared ones.

    Parameters
    ----------
    data : SubjectData
    seed : int
        Seed of the sampler's own random generator.
    query_from : {"shared", "unique"}
        Where query images come from. ``"shared"`` (default) is the paper's evaluation; during
        meta-training on a training subject ``"unique"`` uses held-out unique images instead so
        that the shared images stay untouched.

    Examples
    --------
    >>> from braincorl_lite.simulate import simulate_simnsd
    >>> subj = simulate_simnsd(size="tiny")[0]
    >>> ep = EpisodeSampler(subj, seed=0).sample(k=20, n_voxels=8, n_query=50)
    >>> ep.support_y.shape, ep.query_y.shape
    ((8, 20), (8, 50))
    """

    def __init__(self, data: SubjectData, seed: int = 0, query_from: str = "shared"):
        if query_from not in ("shared", "unique"):
            raise ValueError("query_from must be 'shared' or 'unique'")
        self.data = data
        self.rng = np.random.default_rng(seed)
        self.query_from = query_from

    def sample(self, k: int, n_voxels: Optional[int] = None, n_query: Optional[int] = None,
               voxels=None) -> Episode:
        """One episode with ``k`` support images and ``n_voxels`` random voxels (all if None)."""
        d, rng = self.data, self.rng
        if k < 1:
            raise ValueError("the support set is empty: k must be >= 1")
        pool = d.unique_idx
        if self.query_from == "unique":
            need = k + (n_query or 1)
            if need > pool.size:
                raise ValueError(f"k + n_query = {need} exceeds the {pool.size} unique images")
            perm = rng.permutation(pool)
            support, qpool = np.sort(perm[:k]), perm[k:]
        else:
            if k > pool.size:
                raise ValueError(f"k = {k} exceeds the {pool.size} unique images of {d.subject}")
            support, qpool = np.sort(rng.choice(pool, size=k, replace=False)), d.shared_idx
        if n_query is None or n_query >= qpool.size:
            query = np.sort(qpool)
        else:
            query = np.sort(rng.choice(qpool, size=n_query, replace=False))
        if voxels is None:
            voxels = (np.arange(d.n_voxels) if n_voxels is None or n_voxels >= d.n_voxels
                      else rng.choice(d.n_voxels, size=n_voxels, replace=False))
        voxels = np.asarray(voxels)
        return Episode(support_x=d.features[support], support_y=d.betas[support][:, voxels].T.copy(),
                       query_x=d.features[query], query_y=d.betas[query][:, voxels].T.copy(), voxels=voxels,
                       support_idx=support, query_idx=query)
