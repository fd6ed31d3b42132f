"""Few-shot evaluation on a held-out subject: EV on the shared images per K, method and ROI.

As in the paper, support images are drawn from the held-out subject's unique images, each method
turns (support images, responses) into one linear encoder per voxel, and the encoders are scored
by explained variance on the shared (query) images.

A *method* is any callable ``fit(X, Y) -> (W, b)`` with ``X`` of shape (K, E) and ``Y`` of shape
(K, n_voxels), like :func:`~braincorl_lite.baselines.fit_ridge`. Arguments that would evaluate
nothing raise :class:`~braincorl_lite.errors.ConfigError` before any work, and a method with NaN or
infinite predictions raises :class:`~braincorl_lite.errors.NonFiniteError`: no method is ever
dropped from a table silently. Subjects are **0-based positions** (``dataset[heldout]``); negative
positions are refused, never wrapped around.
"""

from __future__ import annotations

import operator
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .baselines import (_neighbours, anatomical_average, bayes_oracle, fit_ridge, fit_ridge_paper,
                        fully_trained, predict_linear)
from .data import SubjectData
from .errors import ConfigError, NonFiniteError
from .metrics import explained_variance

__all__ = ["KNOWN_METHODS", "few_shot_methods", "braincorl_method", "model_methods", "evaluate_subject",
           "evaluate_heldout", "anatomical_for", "encoder_ev", "cosine_per_voxel", "summarise",
           "images_to_match", "check_ks", "check_n_draws", "subject_position", "PAPER_RIDGE",
           "PAPER_BRAINCORL", "PAPER_FULLY_TRAINED", "simulation_checks", "simulation_report"]

Method = Callable[[np.ndarray, np.ndarray], tuple]


# ---------------------------------------------------------------------------------- argument checks
def _as_int(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
    raise ConfigError(f"{what} must be a whole number, got {value!r}")


def check_n_draws(n_draws) -> int:
    """``n_draws`` as a positive int; :class:`~braincorl_lite.errors.ConfigError` otherwise (0 draws
    would evaluate nothing)."""
    n = _as_int(n_draws, "n_draws")
    if n < 1:
        raise ConfigError(f"n_draws must be at least 1 (0 draws would leave every few-shot method out "
                          f"of the table), got {n}")
    return n


def check_ks(ks, n_unique: int, subject: str = "the subject") -> list:
    """Support sizes as a list of ints, each between 1 and ``n_unique``;
    :class:`~braincorl_lite.errors.ConfigError` otherwise.

    >>> check_ks([10, 100.0], 300)
    [10, 100]
    """
    ks = [_as_int(k, "every K") for k in ([ks] if isinstance(ks, (int, np.integer)) else ks)]
    if not ks:
        raise ConfigError("no support size K given: nothing to evaluate")
    bad = [k for k in ks if k < 1 or k > n_unique]
    if bad:
        raise ConfigError(f"K = {bad} out of range: support sets are drawn from the {n_unique} unique images "
                          f"of {subject}, so every K must be between 1 and {n_unique}")
    return ks


def subject_position(dataset, subject, one_based: bool) -> int:
    """0-based position of a subject given as a 1-based number (``one_based``) or a 0-based position."""
    n, s = len(dataset), _as_int(subject, "the held-out subject")
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
        where = f"K = {k}" + (f" (draw {draw})" if draw is not None else "")
        raise NonFiniteError(f"method {method!r} gave NaN or infinite predictions at {where} for "
                             f"{int(bad.any(axis=0).sum())} of {pred.shape[1]} voxels of {subject}; its encoder "
                             "(e.g. a checkpoint with NaN weights) is broken, so it is not scored")


# ---------------------------------------------------------------------------------- few-shot methods
#: the few-shot methods that :func:`few_shot_methods` knows
KNOWN_METHODS = ("ridge", "ridge_paper", "oracle")


def few_shot_methods(data: SubjectData, prior=None, include=KNOWN_METHODS) -> Dict[str, Method]:
    """The standard few-shot methods for one subject.

    ``"ridge"``: cross-validated ridge (himalaya, :func:`~braincorl_lite.baselines.fit_ridge`);
    ``"ridge_paper"``: the official BraInCoRL ridge protocol
    (:func:`~braincorl_lite.baselines.fit_ridge_paper`); ``"oracle"`` (simulated data only): the
    exact Bayes posterior mean under ``prior`` (e.g. ``dataset.subject_prior(i)``) and the true noise.
    """
    unknown = [m for m in include if m not in KNOWN_METHODS]
    if unknown:
        raise ConfigError(f"unknown few-shot method(s) {unknown}; known: {list(KNOWN_METHODS)}")
    methods: Dict[str, Method] = {m: fit for m, fit in (("ridge", fit_ridge), ("ridge_paper", fit_ridge_paper))
                                  if m in include}
    if "oracle" in include:
        if data.truth is None or prior is None:
            raise ConfigError("the Bayes oracle needs ground truth and the true prior (simulated data only)")
        noise_var = data.truth.effective_noise_var(data.n_repeats)
        methods["oracle"] = lambda X, Y: bayes_oracle(X, Y, prior, noise_var)
    return methods


def braincorl_method(model, chunk_size: int = 512) -> Method:
    """A :class:`~braincorl_lite.model.BraInCoRL` as a few-shot method, through
    :func:`~braincorl_lite.model.fit_braincorl`."""
    from .model import fit_braincorl

    def fit(X, Y):
        W, b = fit_braincorl(model, np.asarray(X, np.float32), np.asarray(Y, np.float32), chunk_size=chunk_size)
        return np.asarray(W, np.float64), np.asarray(b, np.float64)

    return fit


def model_methods(model) -> Dict[str, Method]:
    """Few-shot methods for ``model``: ``{"braincorl": ...}``, one per entry of a dict, or none."""
    if model is None:
        return {}
    if isinstance(model, dict):
        return {name: braincorl_method(m) for name, m in model.items()}
    return {"braincorl": braincorl_method(model)}


# ---------------------------------------------------------------------------------- one subject
def _rows(method, k, draw, ev, roi, subject):
    """Rows of the long table: the mean over all voxels (``roi="all"``), then per ROI (pandas groupby)."""
    import pandas as pd

    per_roi = pd.Series(ev).groupby(np.asarray(roi)).agg(["mean", "size"])
    rois = [("all", float(np.nanmean(ev)), len(ev))] + list(per_roi.itertuples(name=None))
    return [{"subject": subject, "method": method, "k": int(k), "roi": r, "ev": float(m), "n_voxels": int(n),
             "draw": draw} for r, m, n in rois]


def evaluate_subject(data: SubjectData, ks: Sequence[int], methods: Dict[str, Method],
                     n_draws: int = 1, seed: int = 0, fully_trained_encoder: Optional[tuple] = None,
                     anatomical_encoder: Optional[tuple] = None, return_voxelwise: bool = False,
                     progress: bool = False):
    """Explained variance on the shared images for every method, K and ROI.

    Support sets of each K (between 1 and the number of unique images) are the first K of one
    random order of the unique images per draw, so they are nested. ``methods`` maps names to
    ``(X, Y) -> (W, b)``; ``fully_trained_encoder`` and ``anatomical_encoder`` ``(W, b)`` do not
    depend on K (rows with ``k`` = number of unique images and ``k = 0``). ``return_voxelwise``
    also returns ``{(method, k): EV per voxel}`` averaged over the ``n_draws`` draws.

    Returns
    -------
    pandas.DataFrame with columns ``subject, method, k, roi, ev, n_voxels, draw`` (one row per
    draw; the ROI ``"all"`` is the mean over every voxel)

    Raises
    ------
    ConfigError
        ``n_draws < 1``, K out of range, or nothing to evaluate (before any fitting).
    NonFiniteError
        A method (or fixed encoder) with NaN or infinite predictions, named with its K.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    unique = data.unique_idx
    ks = check_ks(ks, unique.size, data.subject)
    n_draws = check_n_draws(n_draws)
    if not methods and fully_trained_encoder is None and anatomical_encoder is None:
        raise ConfigError("no method to evaluate")
    query = data.shared_idx
    y_query, x_query = data.betas[query], data.features[query]
    rows, voxelwise = [], {}
    rng = np.random.default_rng(seed)
    order = {d: rng.permutation(unique) for d in range(n_draws)}
    jobs = [(d, k, name) for d in range(n_draws) for k in ks for name in methods]
    for d, k, name in tqdm(jobs, disable=not progress, desc=f"evaluating {data.subject}"):
        support = np.sort(order[d][:k])
        pred = predict_linear(x_query, *methods[name](data.features[support], data.betas[support]))
        _check_finite(pred, name, k, data.subject, draw=d)
        ev = explained_variance(y_query, pred)
        rows += _rows(name, k, d, ev, data.roi, data.subject)
        voxelwise[(name, k)] = voxelwise.get((name, k), 0.0) + ev / n_draws
    for name, enc, k in (("fully_trained", fully_trained_encoder, unique.size), ("anatomical", anatomical_encoder, 0)):
        if enc is not None:
            pred = predict_linear(x_query, *enc)
            _check_finite(pred, name, k, data.subject)
            voxelwise[(name, k)] = ev = explained_variance(y_query, pred)
            rows += _rows(name, k, 0, ev, data.roi, data.subject)
    table = pd.DataFrame(rows)
    return (table, voxelwise) if return_voxelwise else table


def encoder_ev(data: SubjectData, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Explained variance of linear encoders ``(W, b)`` on the shared (query) images, per voxel."""
    q = data.shared_idx
    return explained_variance(data.betas[q], predict_linear(data.features[q], W, b))


def cosine_per_voxel(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosine similarity between matching rows of two weight matrices (NaN for zero rows).

    >>> cosine_per_voxel(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]]))
    array([ 1., -1.])
    """
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    if A.shape != B.shape:
        raise ValueError(f"weight matrices must have the same shape, got {A.shape} and {B.shape}")
    norm = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (A * B).sum(1) / norm, np.nan)


# ---------------------------------------------------------------------------------- held-out subject
def anatomical_for(dataset, heldout: int, train_idx: Optional[Sequence[int]] = None, voxels=None,
                   radius: float = 6.0):
    """Anatomical-average encoder of subject ``heldout`` from other subjects' fully trained encoders.

    ``heldout`` and ``train_idx`` (default: every other subject) are 0-based positions; a
    subject is never part of its own average. With ``voxels`` (default: all), the training
    subjects' encoders are fitted only for their voxels that enter the average (within
    ``radius`` of a target voxel, and each target's nearest voxel): the same encoders, much
    cheaper for a small subset. Returns ``W`` (n_selected, E) and ``b`` (n_selected,).
    """
    heldout = subject_position(dataset, heldout, one_based=False)
    if train_idx is None:
        train_idx = [i for i in range(len(dataset)) if i != heldout]
    else:
        train_idx = list(dict.fromkeys(subject_position(dataset, i, one_based=False) for i in train_idx))
        if heldout in train_idx:
            raise ConfigError(f"train_idx {train_idx} contains the held-out subject {heldout}: a subject "
                              "cannot be part of its own anatomical average")
    if not train_idx:
        raise ConfigError("the anatomical average needs at least one training subject besides the held-out one")
    target = dataset[heldout]
    vertex = target.vertex if voxels is None else target.select_voxels(voxels).vertex
    if np.any(vertex < 0):
        raise ValueError("the anatomical average needs surface vertices; volumetric voxels (vertex -1) have none")
    train = []
    for i in train_idx:
        s = dataset[i]
        if voxels is None:
            train.append((s.vertex, *fully_trained(s)))
            continue
        hits, nearest = _neighbours(s.vertex, vertex, radius)
        needed = np.unique(np.concatenate([np.asarray(h, int) for h in hits] + [nearest]))
        train.append((s.vertex[needed], *fully_trained(s.select_voxels(needed))))
    return anatomical_average(train, vertex, radius=radius)


def _baseline_include(baselines, use_oracle: bool):
    baselines = (baselines,) if isinstance(baselines, str) else tuple(baselines)
    bad = [m for m in baselines if m not in ("ridge", "ridge_paper")]
    if bad:
        raise ConfigError(f"unknown ridge baseline(s) {bad}; choose from 'ridge' and 'ridge_paper'")
    return baselines + (("oracle",) if use_oracle else ())


def evaluate_heldout(model, dataset, heldout: int, ks: Sequence[int], n_draws=2, seed: int = 0,
                     anatomical: bool = True, oracle: bool = True, progress: bool = True,
                     baselines: Sequence[str] = ("ridge", "ridge_paper"), voxels=None):
    """The full comparison on subject ``dataset[heldout]`` (a 0-based position).

    Parameters
    ----------
    model : BraInCoRL, dict name -> BraInCoRL, or None
        Evaluated as ``"braincorl"`` (or under each name of the dict).
    n_draws : int or dict K -> int
        Support draws per K; a dict gives each K its own number (e.g. one draw at K = 1000)
        and must cover every K. Draw ``d`` uses one order of the unique images whatever K.
    anatomical, oracle : bool
        Add the anatomical average of the other subjects (needs surface vertices) and the Bayes
        oracle (needs ground truth) when the data allow them.
    baselines : sequence of {"ridge", "ridge_paper"}
    voxels : array of int or bool, optional
        Evaluate only these voxels (large K is expensive for the model on a CPU).

    Returns
    -------
    pandas.DataFrame
        The table of :func:`evaluate_subject`, with ``fully_trained`` (and ``anatomical``) rows.
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
    methods = {**model_methods(model), **few_shot_methods(subj, dataset.subject_prior(i) if use_oracle else None,
                                                          _baseline_include(baselines, use_oracle))}
    anat = None
    if anatomical and len(dataset) > 1 and np.all(subj.vertex >= 0):
        anat = anatomical_for(dataset, i, voxels=voxels)
    tables = []
    for j, n in enumerate(sorted(set(draws.values()), reverse=True)):
        fixed = dict(fully_trained_encoder=fully_trained(subj), anatomical_encoder=anat) if j == 0 else {}
        tables.append(evaluate_subject(subj, [k for k in ks if draws[k] == n], methods, n_draws=n, seed=seed,
                                       progress=progress, **fixed))
    if len(tables) == 1:
        return tables[0]
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["method", "k", "draw"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------- summaries
def summarise(table, roi: str = "all"):
    """Mean EV over draws per K (rows) and method (columns) for one ROI."""
    return table[table.roi == roi].pivot_table(index="k", columns="method", values="ev", aggfunc="mean")


def images_to_match(curve_k: Sequence[int], curve_ev: Sequence[float], target_ev: float) -> float:
    """Images a learning curve needs to reach ``target_ev`` (log-linear interpolation; ``inf`` if never).

    >>> round(images_to_match([10, 100, 1000], [0.0, 0.1, 0.2], 0.15))
    316
    """
    k, ev = np.asarray(curve_k, float), np.asarray(curve_ev, float)
    order = np.argsort(k)
    k, ev = k[order], np.maximum.accumulate(ev[order])
    if ev[-1] < target_ev:
        return float("inf")
    if ev[0] >= target_ev:
        return float(k[0])
    i = int(np.argmax(ev >= target_ev))
    f = (target_ev - ev[i - 1]) / max(ev[i] - ev[i - 1], 1e-12)
    return float(np.exp(np.log(k[i - 1]) + f * (np.log(k[i]) - np.log(k[i - 1]))))


# ---------------------------------------------------------------------------------- paper reference
# Published numbers: NSD subject 1, mean EV over higher visual cortex, read off the paper's figure.
#: ridge with K support images, NSD subject 1
PAPER_RIDGE = {30: 0.023, 100: 0.070, 300: 0.109, 1000: 0.141}
#: BraInCoRL with K support images, NSD subject 1
PAPER_BRAINCORL = {30: 0.10, 100: 0.138, 300: 0.157, 1000: 0.166}
#: the fully trained encoder (~9,000 images), NSD subject 1
PAPER_FULLY_TRAINED = 0.176


def simulation_checks(dataset) -> dict:
    """Statistics of a simulated dataset that should look like NSD and CLIP.

    Returns a dict with ``cosine`` (mean and 5-95% of pairwise cosines of image embeddings),
    ``noise_ceiling`` (per-ROI mean and median over subjects), ``preference`` (per ROI, the image
    category with the highest mean true response) and ``top_pc_share`` (share of the weights'
    signal variance in the top 10% principal components of the features).
    """
    import pandas as pd

    from .cortex import ROIS

    x = dataset[0].features[:1000].astype(np.float64)
    cos = (x @ x.T)[np.triu_indices(len(x), 1)]
    nc = pd.concat([pd.Series(s.noise_ceiling, index=s.roi) for s in dataset]).groupby(level=0).agg(
        ["mean", "median"])
    pref = {}
    for roi in ROIS:
        resp = [pd.Series(s.truth.predict(s.features)[:, s.roi == roi].mean(1)).groupby(
            np.asarray(s.meta["image_category"])).mean() for s in dataset if (s.roi == roi).any()]
        means = pd.concat(resp, axis=1).mean(axis=1).sort_values(ascending=False)
        pref[roi] = {"category": ROIS[roi][0], "preferred": means.index[0], "margin": means.iloc[0] - means.iloc[1]}
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

    Subject ``dataset[heldout]`` (0-based) is evaluated with both ridges and the Bayes oracle at
    every K, the anatomical average and its fully trained encoder; the ridge curve is set beside
    the paper's NSD ridge curve, as EV and as a fraction of the fully trained encoder.
    """
    import pandas as pd

    subj = dataset[subject_position(dataset, heldout, one_based=False)]
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
    ev = summarise(table).rename_axis(index="K", columns=None)
    full, anat = (float(ev[m].dropna().iloc[0]) for m in ("fully_trained", "anatomical"))
    paper = np.array([PAPER_RIDGE.get(k, np.nan) for k in ks])
    curve = ev.loc[ks, ["ridge", "ridge_paper", "oracle"]]
    curve = curve.assign(**{"oracle - ridge": curve.oracle - curve.ridge, "anatomical": anat,
                            "ridge / fully trained": curve.ridge / full, "paper ridge (NSD)": paper,
                            "paper ridge / fully trained": paper / PAPER_FULLY_TRAINED})
    print(f"\nmean EV on the {subj.shared_mask.sum()} shared images of {subj.subject} "
          f"({subj.n_voxels} voxels, {n_draws} support draws per K):")
    print(f"fully trained encoder ({subj.unique_idx.size} images): {full:.3f}   "
          f"(paper, NSD subject 1, ~9,000 images: {PAPER_FULLY_TRAINED})")
    with pd.option_context("display.width", 160):
        print(curve.round(3).to_string())
    if out:
        table.to_csv(out, index=False)
        print(f"\nwrote {out}")
    return {"checks": checks, "table": table, "curve": curve,
            "per_roi": table.groupby(["method", "k", "roi"]).ev.mean().unstack("roi"), "fully_trained": full}
