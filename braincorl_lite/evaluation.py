"""Few-shot evaluation on a held-out subject: EV on the shared images per K, method and ROI.

The protocol follows the paper: support images are drawn from the held-out subject's unique
images, each method turns (support images, responses) into one linear encoder per voxel, and the
encoders are scored by explained variance on the shared (query) images.

A *method* is any callable ``fit(support_x, support_y) -> (W, b)`` with ``support_x`` of shape
(K, E) and ``support_y`` of shape (K, n_voxels). :func:`few_shot_methods` builds the standard
ones for a subject.

No method is ever dropped from a table without a word: arguments that would evaluate nothing
(``n_draws < 1``, K outside ``1 .. number of unique images``, a subject that does not exist) raise
:class:`~braincorl_lite.errors.ConfigError` before any work, and a method whose predictions are
NaN or infinite raises :class:`~braincorl_lite.errors.NonFiniteError` naming the method and K.

Subjects are **0-based positions** in the dataset (``dataset[heldout]``) everywhere in the Python
API; only the command line numbers them from 1, as NSD does, and converts at its boundary.
Out-of-range positions, negative ones included, are refused (never wrapped around).
"""

from __future__ import annotations

import operator
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .baselines import (anatomical_average, bayes_oracle, fit_ridge, fit_ridge_paper, fully_trained,
                        predict_linear)
from .data import SubjectData
from .errors import ConfigError, NonFiniteError
from .metrics import explained_variance

__all__ = ["few_shot_methods", "evaluate_subject", "images_to_match", "summarise"]

Method = Callable[[np.ndarray, np.ndarray], tuple]


#: the few-shot methods that :func:`few_shot_methods` knows
KNOWN_METHODS = ("ridge", "ridge_paper", "oracle")


def few_shot_methods(data: SubjectData, prior=None, include=("ridge", "ridge_paper", "oracle")) -> Dict[str, Method]:
    """The standard few-shot methods for one subject.

    ``"ridge"`` is cross-validated ridge on the support set (himalaya, unpenalised intercept,
    :func:`~braincorl_lite.baselines.fit_ridge`); ``"ridge_paper"`` is the official BraInCoRL
    ridge baseline (penalised intercept, 5 sequential folds, mean of the fold models,
    :func:`~braincorl_lite.baselines.fit_ridge_paper`); ``"oracle"`` (simulated data only)
    is the exact Bayes posterior mean under ``prior`` (a :class:`~braincorl_lite.simulate.MixturePrior`,
    offsets already integrated out, e.g. ``dataset.subject_prior(i)``) and the true noise.
    """
    unknown = [m for m in include if m not in KNOWN_METHODS]
    if unknown:
        raise ConfigError(f"unknown few-shot method(s) {unknown}; known: {list(KNOWN_METHODS)}")
    methods: Dict[str, Method] = {}
    if "ridge" in include:
        methods["ridge"] = lambda X, Y: fit_ridge(X, Y)
    if "ridge_paper" in include:
        methods["ridge_paper"] = lambda X, Y: fit_ridge_paper(X, Y)
    if "oracle" in include:
        if data.truth is None or prior is None:
            raise ConfigError("the Bayes oracle needs ground truth and the true prior (simulated data only)")
        noise_var = data.truth.effective_noise_var(data.n_repeats)
        methods["oracle"] = lambda X, Y: bayes_oracle(X, Y, prior, noise_var)
    return methods


def _as_int(value, what: str) -> int:
    """``value`` as an int if it is a whole number, else a :class:`ConfigError`."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ConfigError(f"{what} must be a whole number, got {value!r}")


def check_n_draws(n_draws) -> int:
    """``n_draws`` as a positive int; :class:`ConfigError` otherwise (0 draws would evaluate nothing)."""
    n = _as_int(n_draws, "n_draws")
    if n < 1:
        raise ConfigError(f"n_draws must be at least 1 (0 draws would leave every few-shot method out "
                          f"of the table), got {n}")
    return n


def check_ks(ks, n_unique: int, subject: str = "the subject") -> list:
    """Support sizes as a list of ints, each between 1 and ``n_unique``; :class:`ConfigError` otherwise."""
    if isinstance(ks, (int, np.integer)):
        ks = [ks]
    ks = [_as_int(k, "every K") for k in ks]
    if not ks:
        raise ConfigError("no support size K given: nothing to evaluate")
    bad = [k for k in ks if k < 1 or k > n_unique]
    if bad:
        raise ConfigError(f"K = {bad} out of range: support sets are drawn from the {n_unique} unique images "
                          f"of {subject}, so every K must be between 1 and {n_unique}")
    return ks


def subject_position(dataset, subject, one_based: bool) -> int:
    """0-based position of a subject given as a 1-based number (``one_based``) or a 0-based position.

    Out-of-range values raise :class:`ConfigError`; in particular a negative position never
    wraps around to the last subject.
    """
    n = len(dataset)
    s = _as_int(subject, "the held-out subject")
    if one_based:
        if not 1 <= s <= n:
            raise ConfigError(f"held-out subject {s} does not exist: subjects are numbered 1 to {n} (1-based)")
        return s - 1
    if not 0 <= s < n:
        raise ConfigError(f"held-out subject position {s} does not exist: positions run from 0 to {n - 1} "
                          f"(0-based)")
    return s


def _check_finite(pred: np.ndarray, method: str, k, subject: str, draw=None):
    bad = ~np.isfinite(pred)
    if bad.any():
        n_bad = int(bad.any(axis=0).sum())
        where = f"K = {k}" + (f" (draw {draw})" if draw is not None else "")
        raise NonFiniteError(f"method {method!r} gave NaN or infinite predictions at {where} for {n_bad} of "
                             f"{pred.shape[1]} voxels of {subject}; its encoder (e.g. a checkpoint with NaN "
                             f"weights) is broken, so it is not scored")


def _rows(method, k, draw, ev, roi, extra=None, subject=None):
    rows = [{"subject": subject, "method": method, "k": int(k), "roi": "all", "ev": float(np.nanmean(ev)),
             "n_voxels": int(len(ev)), "draw": draw}]
    for name in sorted(set(roi.tolist())):
        m = roi == name
        rows.append({"subject": subject, "method": method, "k": int(k), "roi": name,
                     "ev": float(np.nanmean(ev[m])), "n_voxels": int(m.sum()), "draw": draw})
    if extra:
        for r in rows:
            r.update(extra)
    return rows


def evaluate_subject(data: SubjectData, ks: Sequence[int], methods: Dict[str, Method],
                     n_draws: int = 1, seed: int = 0, fully_trained_encoder: Optional[tuple] = None,
                     anatomical_encoder: Optional[tuple] = None, return_voxelwise: bool = False,
                     progress: bool = False):
    """Explained variance on the shared images for every method, K and ROI.

    Parameters
    ----------
    data : SubjectData
        The held-out subject.
    ks : sequence of int
        Support-set sizes, each between 1 and the number of unique images. Support sets are
        nested within a draw (the first K of one random order of the unique images), so curves
        over K are not jagged by resampling.
    methods : dict name -> callable
        Few-shot methods (see module docstring).
    n_draws : int
        Independent support draws per K (at least 1); the table has one row per draw (average
        them with :func:`summarise`).
    fully_trained_encoder, anatomical_encoder : (W, b), optional
        Encoders that do not depend on K; reported with ``k`` = number of unique images and
        ``k = 0`` respectively.
    return_voxelwise : bool
        Also return ``{(method, k): EV per voxel}`` averaged over draws.

    Returns
    -------
    pandas.DataFrame with columns ``subject, method, k, roi, ev, n_voxels, draw``

    Raises
    ------
    ConfigError
        ``n_draws < 1``, a K below 1 or above the number of unique images, or nothing to
        evaluate (checked before any fitting).
    NonFiniteError
        A method (or a fixed encoder) whose predictions are NaN or infinite; the message names
        the method and K. No method is left out of the table silently.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    unique = data.unique_idx
    ks = check_ks(ks, unique.size, data.subject)
    n_draws = check_n_draws(n_draws)
    if not methods and fully_trained_encoder is None and anatomical_encoder is None:
        raise ConfigError("no method to evaluate")
    query = data.shared_idx
    y_query = data.betas[query]
    x_query = data.features[query]
    rows, voxelwise = [], {}
    rng = np.random.default_rng(seed)
    jobs = [(d, k, name) for d in range(n_draws) for k in ks for name in methods]
    order = {d: rng.permutation(unique) for d in range(n_draws)}
    for d, k, name in tqdm(jobs, disable=not progress, desc=f"evaluating {data.subject}"):
        support = np.sort(order[d][:k])
        W, b = methods[name](data.features[support], data.betas[support])
        pred = predict_linear(x_query, W, b)
        _check_finite(pred, name, k, data.subject, draw=d)
        ev = explained_variance(y_query, pred)
        rows += _rows(name, k, d, ev, data.roi, subject=data.subject)
        acc = voxelwise.setdefault((name, k), np.zeros(data.n_voxels))
        acc += ev / n_draws
    for name, enc, k in (("fully_trained", fully_trained_encoder, unique.size), ("anatomical", anatomical_encoder, 0)):
        if enc is not None:
            pred = predict_linear(x_query, *enc)
            _check_finite(pred, name, k, data.subject)
            ev = explained_variance(y_query, pred)
            rows += _rows(name, k, 0, ev, data.roi, subject=data.subject)
            voxelwise[(name, k)] = ev
    table = pd.DataFrame(rows)
    return (table, voxelwise) if return_voxelwise else table


def braincorl_method(model, chunk_size: int = 512) -> Method:
    """Wrap a :class:`~braincorl_lite.model.BraInCoRL` as a few-shot method ``(X, Y) -> (W, b)``."""
    from .model import predict_encoders

    def fit(X, Y):
        hw = predict_encoders(model, np.asarray(X, np.float32), np.asarray(Y, np.float32).T, chunk_size=chunk_size)
        return hw[:, :-1].astype(np.float64), hw[:, -1].astype(np.float64)

    return fit


def _baseline_include(baselines, use_oracle: bool):
    if isinstance(baselines, str):
        baselines = (baselines,)
    baselines = tuple(baselines)
    bad = [m for m in baselines if m not in ("ridge", "ridge_paper")]
    if bad:
        raise ConfigError(f"unknown ridge baseline(s) {bad}; choose from 'ridge' and 'ridge_paper'")
    return baselines + (("oracle",) if use_oracle else ())


def model_methods(model) -> Dict[str, Method]:
    """Few-shot methods for ``model``: ``{"braincorl": ...}``, one per entry of a dict, or none."""
    if model is None:
        return {}
    if isinstance(model, dict):
        return {name: braincorl_method(m) for name, m in model.items()}
    return {"braincorl": braincorl_method(model)}


def evaluate_heldout(model, dataset, heldout: int, ks: Sequence[int], n_draws: int = 2, seed: int = 0,
                     anatomical: bool = True, oracle: bool = True, progress: bool = True,
                     baselines: Sequence[str] = ("ridge", "ridge_paper")):
    """The full comparison on subject ``dataset[heldout]`` (a 0-based position) of a dataset.

    Methods: ``braincorl`` (if ``model`` is given; a dict of models gives one method per name), the ridge ``baselines`` (``ridge``: himalaya
    CV ridge; ``ridge_paper``: the official BraInCoRL ridge protocol), ``oracle`` (simulated data,
    unless ``oracle=False``), ``fully_trained`` and ``anatomical`` (the other subjects of
    ``dataset`` provide it; never the held-out subject itself). Returns the table of
    :func:`evaluate_subject`, whose ``subject`` column names the evaluated subject.

    ``heldout`` outside ``0 .. len(dataset) - 1`` (negative positions included), ``n_draws < 1``
    and K outside ``1 .. number of unique images`` raise :class:`ConfigError` before any fitting.
    """
    i = subject_position(dataset, heldout, one_based=False)
    subj = dataset[i]
    ks = check_ks(ks, subj.unique_idx.size, subj.subject)
    n_draws = check_n_draws(n_draws)
    include = _baseline_include(baselines, oracle and subj.truth is not None)
    methods = few_shot_methods(subj, dataset.subject_prior(i) if "oracle" in include else None, include)
    methods = {**model_methods(model), **methods}
    ft = fully_trained(subj)
    anat = anatomical_for(dataset, i) if anatomical and len(dataset) > 1 else None
    return evaluate_subject(subj, ks, methods, n_draws=n_draws, seed=seed, fully_trained_encoder=ft,
                            anatomical_encoder=anat, progress=progress)


def summarise(table, roi: str = "all"):
    """Mean (and sd across draws) of EV per method and K for one ROI, methods as columns."""
    t = table[table.roi == roi]
    return t.pivot_table(index="k", columns="method", values="ev", aggfunc="mean")


def images_to_match(curve_k: Sequence[int], curve_ev: Sequence[float], target_ev: float) -> float:
    """Number of images a learning curve needs to reach ``target_ev`` (log-linear interpolation).

    Returns ``inf`` when the curve never reaches the target within its range.
    """
    k = np.asarray(curve_k, float)
    ev = np.asarray(curve_ev, float)
    order = np.argsort(k)
    k, ev = k[order], np.maximum.accumulate(ev[order])
    if ev[-1] < target_ev:
        return float("inf")
    if ev[0] >= target_ev:
        return float(k[0])
    i = int(np.argmax(ev >= target_ev))
    f = (target_ev - ev[i - 1]) / max(ev[i] - ev[i - 1], 1e-12)
    return float(np.exp(np.log(k[i - 1]) + f * (np.log(k[i]) - np.log(k[i - 1]))))


def anatomical_for(dataset, heldout: int, train_idx: Optional[Sequence[int]] = None, encoders=None):
    """Anatomical-average encoder of subject ``heldout`` from the other subjects' fully trained encoders.

    ``heldout`` and ``train_idx`` are **0-based** positions in ``dataset``. ``train_idx`` defaults
    to every other subject; it must not contain ``heldout`` (a subject is never part of its own
    anatomical average) and must not be empty. Out-of-range (or negative) positions raise
    :class:`ConfigError`. ``encoders`` caches fully trained encoders by position.
    """
    heldout = subject_position(dataset, heldout, one_based=False)
    if train_idx is None:
        train_idx = [i for i in range(len(dataset)) if i != heldout]
    else:
        train_idx = [subject_position(dataset, i, one_based=False) for i in train_idx]
        if heldout in train_idx:
            raise ConfigError(f"train_idx {train_idx} contains the held-out subject {heldout}: a subject "
                              "cannot be part of its own anatomical average")
        train_idx = list(dict.fromkeys(train_idx))
    if not train_idx:
        raise ConfigError("the anatomical average needs at least one training subject besides the held-out one")
    encoders = {} if encoders is None else encoders
    train = []
    for i in train_idx:
        if i not in encoders:
            encoders[i] = fully_trained(dataset[i])
        W, b = encoders[i]
        train.append((dataset[i].vertex, W, b))
    return anatomical_average(train, dataset[heldout].vertex)


# ----------------------------------------------------------------------------------------------
# Published numbers (NSD subject 1, mean EV over higher visual cortex, read off the paper's figure)
# ----------------------------------------------------------------------------------------------
#: ridge with K support images, NSD subject 1
PAPER_RIDGE = {30: 0.023, 100: 0.070, 300: 0.109, 1000: 0.141}
#: BraInCoRL with K support images, NSD subject 1
PAPER_BRAINCORL = {30: 0.10, 100: 0.138, 300: 0.157, 1000: 0.166}
#: the fully trained encoder (~9,000 images), NSD subject 1
PAPER_FULLY_TRAINED = 0.176


def simulation_checks(dataset) -> dict:
    """Statistics of a simulated dataset that should look like NSD and CLIP (tables and numbers).

    Returns a dict with ``cosine`` (mean and 5-95% of pairwise cosine of image embeddings),
    ``noise_ceiling`` (per-ROI mean noise ceiling over subjects), ``preference`` (per ROI, the
    image category with the highest mean true response) and ``top_pc_share`` (share of the
    weights' signal variance in the top 10% principal components of the features).
    """
    import pandas as pd

    from .simulate import ROIS

    s0 = dataset[0]
    x = s0.features[:1000].astype(np.float64)
    cos = (x @ x.T)[np.triu_indices(len(x), 1)]
    nc = pd.concat([pd.Series(s.noise_ceiling, index=s.roi) for s in dataset]).groupby(level=0).agg(
        ["mean", "median"])
    pref = {}
    for roi in list(ROIS):
        means = {}
        for s in dataset:
            vox = s.roi == roi
            if not vox.any():
                continue
            cat = np.asarray(s.meta["image_category"])
            resp = s.truth.predict(s.features)[:, vox].mean(1)
            for c in np.unique(cat):
                means.setdefault(c, []).append(resp[cat == c].mean())
        means = {c: float(np.mean(v)) for c, v in means.items()}
        best = max(means, key=means.get)
        pref[roi] = {"category": ROIS[roi][0], "preferred": best,
                     "margin": means[best] - sorted(means.values())[-2]}
    _, cov = dataset.world.feature_stats
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    n_top = len(evals) // 10
    W = np.vstack([s.truth.weights for s in dataset]).astype(np.float64)
    proj = (W @ evecs) ** 2 * evals
    return {"cosine": {"mean": float(cos.mean()), "p5": float(np.percentile(cos, 5)),
                       "p95": float(np.percentile(cos, 95))},
            "noise_ceiling": nc, "preference": pd.DataFrame(pref).T,
            "top_pc_share": float(proj[:, :n_top].sum() / proj.sum()),
            "top_pc_share_of_norm": float(((W @ evecs[:, :n_top]) ** 2).sum() / (W ** 2).sum())}


def simulation_report(dataset, heldout: int = 0, ks=(10, 30, 100, 300, 1000), n_draws: int = 2,
                      seed: int = 0, out=None, progress: bool = True) -> dict:
    """Print the calibration report of a simulated dataset and return its tables.

    The held-out subject ``dataset[heldout]`` (0-based) is evaluated with ridge (himalaya CV ridge and the official
    paper protocol, ``ridge_paper``) and the Bayes oracle at every K, the
    anatomical average of the other subjects' fully trained encoders, and its own fully trained
    encoder, on the shared images. The ridge curve is set beside the paper's NSD ridge curve,
    both as EV and as a fraction of the fully trained encoder.
    """
    import pandas as pd

    i = subject_position(dataset, heldout, one_based=False)
    subj = dataset[i]
    ks = check_ks(ks, subj.unique_idx.size, subj.subject)
    n_draws = check_n_draws(n_draws)
    checks = simulation_checks(dataset)
    print(f"\n== {dataset.name}: a simulation, not NSD ==")
    if hasattr(dataset, "generation_seconds"):
        print(f"generation time: {dataset.generation_seconds:.1f} s")
    c = checks["cosine"]
    print(f"pairwise cosine of image embeddings: mean {c['mean']:.2f} (5-95%: {c['p5']:.2f}-{c['p95']:.2f})")
    print(f"share of the weights' signal variance in the top 10% feature PCs: {checks['top_pc_share']:.2f} "
          f"(share of their squared norm: {checks['top_pc_share_of_norm']:.2f})")
    print("\nnoise ceiling per ROI (fraction of variance, all subjects):")
    print(checks["noise_ceiling"].round(3).to_string())
    print("\ncategory preference of each ROI (from the true weights):")
    print(checks["preference"].to_string())
    table = evaluate_heldout(None, dataset, heldout, ks, n_draws=n_draws, seed=seed, progress=progress)
    mean = table[table.roi == "all"].groupby(["method", "k"]).ev.mean()
    full = float(mean["fully_trained"].iloc[0])
    anat_ev = float(mean["anatomical"].iloc[0])
    rows = []
    for k in ks:
        r, o = mean["ridge", k], mean["oracle", k]
        paper = PAPER_RIDGE.get(k, np.nan)
        rows.append({"K": k, "ridge": r, "ridge_paper": mean["ridge_paper", k], "oracle": o,
                     "oracle - ridge": o - r, "anatomical": anat_ev,
                     "ridge / fully trained": r / full, "paper ridge (NSD)": paper,
                     "paper ridge / fully trained": paper / PAPER_FULLY_TRAINED})
    curve = pd.DataFrame(rows).set_index("K")
    print(f"\nmean EV on the {subj.shared_mask.sum()} shared images of {subj.subject} "
          f"({subj.n_voxels} voxels, {n_draws} support draws per K):")
    print(f"fully trained encoder ({subj.unique_idx.size} images): {full:.3f}   "
          f"(paper, NSD subject 1, ~9,000 images: {PAPER_FULLY_TRAINED})")
    with pd.option_context("display.width", 160):
        print(curve.round(3).to_string())
    per_roi = table.groupby(["method", "k", "roi"]).ev.mean().unstack("roi")
    if out:
        table.to_csv(out, index=False)
        print(f"\nwrote {out}")
    return {"checks": checks, "table": table, "curve": curve, "per_roi": per_roi, "fully_trained": full}


# ----------------------------------------------------------------------------------------------
# Helpers of the few-shot and test-time scaling chapters
# ----------------------------------------------------------------------------------------------
def cosine_per_voxel(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosine similarity between matching rows of two weight matrices, shape (n_voxels,).

    Rows with zero norm give NaN.

    Examples
    --------
    >>> cosine_per_voxel(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]]))
    array([ 1., -1.])
    """
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    if A.shape != B.shape:
        raise ValueError(f"weight matrices must have the same shape, got {A.shape} and {B.shape}")
    norm = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (A * B).sum(1) / norm, np.nan)


def encoder_ev(data: SubjectData, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Explained variance of linear encoders ``(W, b)`` on the shared (query) images, per voxel."""
    q = data.shared_idx
    return explained_variance(data.betas[q], predict_linear(data.features[q], W, b))


def anatomical_for_voxels(dataset, heldout: int, voxels=None, radius: float = 6.0):
    """Anatomical-average encoder for some voxels of subject ``heldout`` (0-based), fitting only what it needs.

    Gives the same encoders as ``anatomical_for(dataset, heldout)`` restricted to ``voxels``, but
    fits the training subjects' fully trained encoders only for their voxels that enter the
    average (those within ``radius`` of a target voxel, and each target's nearest voxel), which
    is much cheaper when ``voxels`` is a small subset.

    Parameters
    ----------
    dataset : SimDataset or RealDataset
        Subjects on the fsaverage5 surface.
    heldout : int
        0-based index of the target subject; every other subject is a training subject.
    voxels : array of int or bool, optional
        Voxels of the target subject (default: all).
    radius : float
        As in :func:`~braincorl_lite.baselines.anatomical_average`.

    Returns
    -------
    W : ndarray (n_selected, n_features), b : ndarray (n_selected,)
    """
    from scipy.spatial import cKDTree

    from .simulate import fsaverage5_mesh

    heldout = subject_position(dataset, heldout, one_based=False)
    target = dataset[heldout]
    vertex = target.vertex if voxels is None else target.select_voxels(voxels).vertex
    if np.any(vertex < 0):
        raise ValueError("anatomical_for_voxels needs surface vertices; volumetric voxels (vertex -1) have none")
    coords = np.asarray(fsaverage5_mesh()[0], float).copy()
    coords[len(coords) // 2:, 0] += 1e4  # keep the hemispheres apart, as anatomical_average does
    train = []
    for i in range(len(dataset)):
        if i == heldout:
            continue
        s = dataset[i]
        tree = cKDTree(coords[s.vertex])
        hits = tree.query_ball_point(coords[vertex], r=radius)
        _, nearest = tree.query(coords[vertex], k=1)
        needed = np.unique(np.concatenate([np.concatenate([np.asarray(h, int) for h in hits]),
                                           np.atleast_1d(nearest).astype(int)]))
        W, b = fully_trained(s.select_voxels(needed))
        train.append((s.vertex[needed], W, b))
    return anatomical_average(train, vertex, radius=radius)


def evaluate_heldout_subset(model, dataset, heldout: int, ks: Sequence[int], voxels=None, n_draws=2,
                            seed: int = 0, oracle: bool = True, anatomical: bool = True,
                            progress: bool = True, baselines: Sequence[str] = ("ridge", "ridge_paper")):
    """:func:`evaluate_heldout` on a subset of the held-out subject's voxels, with fewer draws at large K.

    Parameters
    ----------
    model : BraInCoRL, dict of name -> BraInCoRL, or None
        Evaluated as ``"braincorl"`` (or under each name of the dict) when given.
    dataset : dataset
        ``dataset[heldout]`` is the held-out subject.
    heldout : int
        0-based position (negative and too large positions raise :class:`ConfigError`).
    ks : sequence of int
        Support-set sizes, each between 1 and the number of unique images.
    voxels : array of int or bool, optional
        Voxels to evaluate (default: all). Large K is expensive for the model on a CPU
        (the cost grows with K squared), so a random subset keeps learning curves affordable.
    n_draws : int or dict K -> int
        Support draws per K (at least 1); a dict gives each K its own number (e.g. one draw at
        K = 1000) and must cover every K.
        Draw ``d`` uses the same random order of the unique images whatever its K, so support
        sets stay nested across K.
    oracle, anatomical : bool
        Include the Bayes oracle (needs ground truth) and the anatomical average (needs surface
        vertices); skipped when the data do not allow them.
    baselines : sequence of str
        Ridge baselines: ``"ridge"`` and/or ``"ridge_paper"``.

    Returns
    -------
    pandas.DataFrame
        The table of :func:`evaluate_subject` (``subject, method, k, roi, ev, n_voxels, draw``).
    """
    import pandas as pd

    i = subject_position(dataset, heldout, one_based=False)
    full = dataset[i]
    ks = check_ks(ks, full.unique_idx.size, full.subject)
    if isinstance(n_draws, dict):
        missing = [k for k in ks if k not in n_draws]
        if missing:
            raise ConfigError(f"n_draws gives no number of draws for K = {missing}")
        draws = {k: check_n_draws(n_draws[k]) for k in ks}
    else:
        n = check_n_draws(n_draws)
        draws = {k: n for k in ks}
    subj = full if voxels is None else full.select_voxels(voxels)
    use_oracle = oracle and subj.truth is not None
    include = _baseline_include(baselines, use_oracle)
    methods = {**model_methods(model),
               **few_shot_methods(subj, dataset.subject_prior(i) if use_oracle else None, include)}
    anat = None
    if anatomical and len(dataset) > 1 and np.all(subj.vertex >= 0):
        anat = anatomical_for_voxels(dataset, i, voxels)
    tables = []
    for j, n in enumerate(sorted(set(draws.values()), reverse=True)):
        group = [k for k in ks if draws[int(k)] == n]
        extra = dict(fully_trained_encoder=fully_trained(subj), anatomical_encoder=anat) if j == 0 else {}
        tables.append(evaluate_subject(subj, group, methods, n_draws=n, seed=seed, progress=progress, **extra))
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["method", "k", "draw"], kind="stable").reset_index(drop=True)


__all__ += ["cosine_per_voxel", "encoder_ev", "anatomical_for_voxels", "evaluate_heldout_subset",
            "check_ks", "check_n_draws", "subject_position", "KNOWN_METHODS"]
