"""Few-shot evaluation on a held-out subject: EV on the shared images per K, method and ROI.

The protocol follows the paper: support images are drawn from the held-out subject's unique
images, each method turns (support images, responses) into one linear encoder per voxel, and the
encoders are scored by explained variance on the shared (query) images.

A *method* is any callable ``fit(support_x, support_y) -> (W, b)`` with ``support_x`` of shape
(K, E) and ``support_y`` of shape (K, n_voxels). :func:`few_shot_methods` builds the standard
ones for a subject.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .baselines import anatomical_average, bayes_oracle, fit_ridge, fully_trained, predict_linear
from .data import SubjectData
from .metrics import explained_variance

__all__ = ["few_shot_methods", "evaluate_subject", "images_to_match", "summarise"]

Method = Callable[[np.ndarray, np.ndarray], tuple]


def few_shot_methods(data: SubjectData, prior=None, include=("ridge", "oracle")) -> Dict[str, Method]:
    """The standard few-shot methods for one subject.

    ``"ridge"`` is cross-validated ridge on the support set; ``"oracle"`` (simulated data only)
    is the exact Bayes posterior mean under ``prior`` (a :class:`~braincorl_lite.simulate.MixturePrior`,
    offsets already integrated out, e.g. ``dataset.subject_prior(i)``) and the true noise.
    """
    methods: Dict[str, Method] = {}
    if "ridge" in include:
        methods["ridge"] = lambda X, Y: fit_ridge(X, Y)
    if "oracle" in include:
        if data.truth is None or prior is None:
            raise ValueError("the Bayes oracle needs ground truth and the true prior (simulated data only)")
        noise_var = data.truth.effective_noise_var(data.n_repeats)
        methods["oracle"] = lambda X, Y: bayes_oracle(X, Y, prior, noise_var)
    return methods


def _rows(method, k, draw, ev, roi, extra=None):
    rows = [{"method": method, "k": int(k), "roi": "all", "ev": float(np.nanmean(ev)),
             "n_voxels": int(len(ev)), "draw": draw}]
    for name in sorted(set(roi.tolist())):
        m = roi == name
        rows.append({"method": method, "k": int(k), "roi": name, "ev": float(np.nanmean(ev[m])),
                     "n_voxels": int(m.sum()), "draw": draw})
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
        Support-set sizes. Support sets are nested within a draw (the first K of one random
        order of the unique images), so curves over K are not jagged by resampling.
    methods : dict name -> callable
        Few-shot methods (see module docstring).
    n_draws : int
        Independent support draws per K; the table has one row per draw (average them with
        :func:`summarise`).
    fully_trained_encoder, anatomical_encoder : (W, b), optional
        Encoders that do not depend on K; reported with ``k`` = number of unique images and
        ``k = 0`` respectively.
    return_voxelwise : bool
        Also return ``{(method, k): EV per voxel}`` averaged over draws.

    Returns
    -------
    pandas.DataFrame with columns ``method, k, roi, ev, n_voxels, draw``
    """
    import pandas as pd
    from tqdm.auto import tqdm

    query = data.shared_idx
    y_query = data.betas[query]
    x_query = data.features[query]
    unique = data.unique_idx
    ks = [int(k) for k in ks]
    if max(ks) > unique.size:
        raise ValueError(f"K = {max(ks)} exceeds the {unique.size} unique images of {data.subject}")
    rows, voxelwise = [], {}
    rng = np.random.default_rng(seed)
    jobs = [(d, k, name) for d in range(n_draws) for k in ks for name in methods]
    order = {d: rng.permutation(unique) for d in range(n_draws)}
    for d, k, name in tqdm(jobs, disable=not progress, desc=f"evaluating {data.subject}"):
        support = np.sort(order[d][:k])
        W, b = methods[name](data.features[support], data.betas[support])
        ev = explained_variance(y_query, predict_linear(x_query, W, b))
        rows += _rows(name, k, d, ev, data.roi)
        acc = voxelwise.setdefault((name, k), np.zeros(data.n_voxels))
        acc += ev / n_draws
    for name, enc, k in (("fully_trained", fully_trained_encoder, unique.size), ("anatomical", anatomical_encoder, 0)):
        if enc is not None:
            ev = explained_variance(y_query, predict_linear(x_query, *enc))
            rows += _rows(name, k, 0, ev, data.roi)
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


def evaluate_heldout(model, dataset, heldout: int, ks: Sequence[int], n_draws: int = 2, seed: int = 0,
                     anatomical: bool = True, oracle: bool = True, progress: bool = True):
    """The full comparison on subject ``heldout`` (1-based) of a simulated dataset.

    Methods: ``braincorl`` (if ``model`` is given), ``ridge``, ``oracle``, ``fully_trained`` and
    ``anatomical`` (the other subjects of ``dataset`` provide it). Returns the table of
    :func:`evaluate_subject`.
    """
    i = heldout - 1
    subj = dataset[i]
    include = ("ridge", "oracle") if oracle and subj.truth is not None else ("ridge",)
    methods = few_shot_methods(subj, dataset.subject_prior(i) if "oracle" in include else None, include)
    if model is not None:
        methods = {"braincorl": braincorl_method(model), **methods}
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
    """Anatomical-average encoder of subject ``heldout`` from the other subjects' fully trained encoders."""
    train_idx = [i for i in range(len(dataset)) if i != heldout] if train_idx is None else list(train_idx)
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


def simulation_report(dataset, heldout: int = 1, ks=(10, 30, 100, 300, 1000), n_draws: int = 2,
                      seed: int = 0, out=None, progress: bool = True) -> dict:
    """Print the calibration report of a simulated dataset and return its tables.

    The held-out subject (1-based) is evaluated with ridge and the Bayes oracle at every K, the
    anatomical average of the other subjects' fully trained encoders, and its own fully trained
    encoder, on the shared images. The ridge curve is set beside the paper's NSD ridge curve,
    both as EV and as a fraction of the fully trained encoder.
    """
    import pandas as pd

    i = heldout - 1
    subj = dataset[i]
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
        rows.append({"K": k, "ridge": r, "oracle": o, "oracle - ridge": o - r, "anatomical": anat_ev,
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
                            progress: bool = True):
    """:func:`evaluate_heldout` on a subset of the held-out subject's voxels, with fewer draws at large K.

    Parameters
    ----------
    model : BraInCoRL or None
        Evaluated as ``"braincorl"`` when given.
    dataset : dataset
        ``dataset[heldout - 1]`` is the held-out subject.
    heldout : int
        1-based subject number.
    ks : sequence of int
        Support-set sizes.
    voxels : array of int or bool, optional
        Voxels to evaluate (default: all). Large K is expensive for the model on a CPU
        (the cost grows with K squared), so a random subset keeps learning curves affordable.
    n_draws : int or dict K -> int
        Support draws per K; a dict gives each K its own number (e.g. one draw at K = 1000).
        Draw ``d`` uses the same random order of the unique images whatever its K, so support
        sets stay nested across K.
    oracle, anatomical : bool
        Include the Bayes oracle (needs ground truth) and the anatomical average (needs surface
        vertices); silently skipped when the data do not allow them.

    Returns
    -------
    pandas.DataFrame
        The table of :func:`evaluate_subject` (``method, k, roi, ev, n_voxels, draw``).
    """
    import pandas as pd

    i = heldout - 1
    full = dataset[i]
    subj = full if voxels is None else full.select_voxels(voxels)
    use_oracle = oracle and subj.truth is not None
    include = ("ridge", "oracle") if use_oracle else ("ridge",)
    methods = few_shot_methods(subj, dataset.subject_prior(i) if use_oracle else None, include)
    if model is not None:
        methods = {"braincorl": braincorl_method(model), **methods}
    draws = {int(k): (n_draws[k] if isinstance(n_draws, dict) else int(n_draws)) for k in ks}
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


__all__ += ["cosine_per_voxel", "encoder_ev", "anatomical_for_voxels", "evaluate_heldout_subset"]
