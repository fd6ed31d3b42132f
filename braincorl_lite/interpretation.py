"""Looking inside the in-context encoder: attention, weight geometry, support sets and language.

BraInCoRL reads a voxel's encoder out of register token 0. Which support images does that token
look at? Do the predicted weights of voxels of one region cluster together? Does the choice of
support images matter? And, since the predicted weights live in the image-embedding space, what
does a voxel "think" of a sentence? This module holds the computations behind those chapters:

* :func:`register_attention` -- attention from a register token to the support images
  (last block, mean over heads, as in the paper).
* :func:`topk_precision`, :func:`attention_precision_table` -- how often the top-attended images
  belong to a region's preferred category, against chance.
* :func:`pca_project`, :func:`separation_scores` -- a 2-D map of the weights and a number for how
  well regions separate (cross-validated nearest-centroid accuracy, silhouette).
* :func:`build_support_set` -- random, category-balanced ("diverse") or single-category support sets.
* :func:`prompt_responses`, :func:`classify_by_prompts`, :func:`prompt_confusion`,
  :func:`modality_gap`, :func:`close_modality_gap` -- zero-shot responses to text embeddings.

Everything takes plain arrays, so it works on SimNSD and on real NSD alike (the category of an
image is needed only for the precision and support-set parts).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .simulate import FLOC_CATEGORIES, ROIS

__all__ = [
    "ROI_CATEGORY",
    "CATEGORY_PROMPTS",
    "register_attention",
    "attention_spread",
    "top_attended",
    "topk_precision",
    "attention_precision_table",
    "pca_project",
    "separation_scores",
    "build_support_set",
    "prompt_responses",
    "classify_by_prompts",
    "prompt_confusion",
    "modality_gap",
    "close_modality_gap",
]

#: ROI -> the floc category it prefers (FFA -> faces, PPA -> places, ...)
ROI_CATEGORY: Dict[str, str] = {roi: spec[0] for roi, spec in ROIS.items()}

#: one text prompt per floc category (the prompts of the language chapter)
CATEGORY_PROMPTS: Dict[str, str] = {
    "faces": "a photo of a face",
    "bodies": "a person's body",
    "places": "a house",
    "food": "food on a plate",
    "words": "written words",
}


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------
def register_attention(model, support_x, support_y, layer: int = -1, register: int = 0,
                       chunk_size: int = 128, heads: str = "mean") -> np.ndarray:
    """Attention of one register token to the support images, per voxel.

    Parameters
    ----------
    model : BraInCoRL
        The in-context model (run in eval mode, without gradients; its mode is restored).
    support_x : array, shape (K, E)
        Support image embeddings, shared by all voxels.
    support_y : array, shape (n_voxels, K)
        Responses of each voxel to the support images.
    layer : int
        Transformer block to read (default: the last one, as in the paper).
    register : int
        Register token whose attention is read (0: the one the encoder is read out from).
    chunk_size : int
        Voxels per forward pass (the explicit attention needs ``B * heads * N^2`` floats).
    heads : {"mean", "all"}
        Average over heads (paper) or keep them: shape ``(n_voxels, n_heads, K)``.

    Returns
    -------
    ndarray, float32, shape (n_voxels, K)
        Attention probabilities from the register to each support image, in input order. The
        rest of the probability mass (to the register tokens) is left out, so rows sum to
        slightly less than 1.

    Examples
    --------
    >>> import numpy as np
    >>> from braincorl_lite.model import BraInCoRL, ModelConfig
    >>> model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=2))
    >>> a = register_attention(model, np.random.randn(20, 16), np.random.randn(5, 20))
    >>> a.shape
    (5, 20)
    """
    import torch

    if heads not in ("mean", "all"):
        raise ValueError(f"heads must be 'mean' or 'all', got {heads!r}")
    R = model.config.n_registers
    if not 0 <= register < R:
        raise ValueError(f"register must lie in [0, {R}), got {register}")
    device, dtype = model.device, model.registers.dtype
    x = torch.as_tensor(np.asarray(support_x, np.float32)).to(device=device, dtype=dtype)
    y_all = torch.as_tensor(np.asarray(support_y, np.float32))
    if x.dim() != 2 or y_all.dim() != 2 or y_all.shape[1] != x.shape[0]:
        raise ValueError(f"support_x must be (K, E) and support_y (n_voxels, K); got {tuple(x.shape)} "
                         f"and {tuple(y_all.shape)}")
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, y_all.shape[0], chunk_size):
                y = y_all[start:start + chunk_size].to(device=device, dtype=dtype)
                _, att = model(x, y, return_attention=True)
                a = att[layer][:, :, register, R:]  # (B, heads, K)
                out.append((a.mean(1) if heads == "mean" else a).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def attention_spread(probabilities) -> np.ndarray:
    """How widely attention is spread: the effective number of attended tokens over their number.

    ``exp(entropy) / N`` for each row of attention probabilities over ``N`` tokens: 1 for uniform
    attention, ``1 / N`` when all the mass is on one token.

    Parameters
    ----------
    probabilities : array, shape (..., N)
        Rows that sum to 1 (e.g. register 0's attention to every token of a block).

    Returns
    -------
    ndarray, shape (...)

    Examples
    --------
    >>> attention_spread([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    array([1.  , 0.25])
    """
    p = np.asarray(probabilities, dtype=np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)
    return np.exp(entropy) / p.shape[-1]


def top_attended(attention, n: int = 10) -> np.ndarray:
    """Indices of the ``n`` most attended support images of each voxel, most attended first.

    Parameters
    ----------
    attention : array, shape (n_voxels, K)
    n : int

    Returns
    -------
    ndarray of int, shape (n_voxels, n)

    Examples
    --------
    >>> top_attended(np.array([[0.1, 0.5, 0.2]]), 2)
    array([[1, 2]])
    """
    a = np.asarray(attention)
    if not 1 <= n <= a.shape[1]:
        raise ValueError(f"n must lie in [1, {a.shape[1]}], got {n}")
    return np.argsort(-a, axis=1, kind="stable")[:, :n]


def topk_precision(attention, image_category, target, n: int = 10) -> np.ndarray:
    """Share of each voxel's ``n`` most attended support images that belong to ``target``.

    Parameters
    ----------
    attention : array, shape (n_voxels, K)
    image_category : array of str, shape (K,)
        Category of each support image.
    target : str or array of str, shape (n_voxels,)
        The category expected for every voxel (or one per voxel).
    n : int

    Returns
    -------
    ndarray, shape (n_voxels,)

    Examples
    --------
    >>> topk_precision(np.array([[0.5, 0.3, 0.2]]), np.array(["faces", "food", "faces"]), "faces", 2)
    array([0.5])
    """
    cats = np.asarray(image_category)
    top = top_attended(attention, n)
    target = np.asarray(target)
    if target.ndim == 0:
        target = np.full(top.shape[0], target)
    return (cats[top] == target[:, None]).mean(axis=1)


def attention_precision_table(attention, image_category, roi, n: int = 10, responses=None,
                              roi_category: Optional[Mapping[str, str]] = None):
    """Top-``n`` precision of attention per ROI, with chance and (optionally) the top responses.

    Parameters
    ----------
    attention : array, shape (n_voxels, K)
    image_category : array of str, shape (K,)
        Category of each support image.
    roi : array of str, shape (n_voxels,)
        ROI of each voxel; ROIs missing from ``roi_category`` (e.g. "other") are skipped.
    n : int
        Number of top-attended images per voxel.
    responses : array, shape (n_voxels, K), optional
        The voxels' measured support responses; adds the precision of the ``n`` images with the
        highest responses (what a reader would pick by eye from the data).
    roi_category : mapping ROI -> category, optional
        Default :data:`ROI_CATEGORY`.

    Returns
    -------
    pandas.DataFrame indexed by ROI with columns ``category, n_voxels, precision, chance,
    ratio`` (precision / chance) and, with ``responses``, ``precision_top_response``.
    ``chance`` is the category's share of the support set.
    """
    import pandas as pd

    roi_category = ROI_CATEGORY if roi_category is None else roi_category
    cats = np.asarray(image_category)
    roi = np.asarray(roi)
    rows = []
    for name, cat in roi_category.items():
        m = roi == name
        if not m.any():
            continue
        prec = topk_precision(np.asarray(attention)[m], cats, cat, n)
        chance = float(np.mean(cats == cat))
        row = {"roi": name, "category": cat, "n_voxels": int(m.sum()), "precision": float(prec.mean()),
               "chance": chance, "ratio": float(prec.mean() / chance) if chance > 0 else np.nan}
        if responses is not None:
            row["precision_top_response"] = float(topk_precision(np.asarray(responses)[m], cats, cat, n).mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("roi")


# ----------------------------------------------------------------------------------------------
# Geometry of the predicted weights
# ----------------------------------------------------------------------------------------------
def pca_project(weights, n_components: int = 2, normalise: bool = True):
    """Principal-component scores of voxel weights (a linear stand-in for the paper's UMAP).

    Parameters
    ----------
    weights : array, shape (n_voxels, E)
    n_components : int
    normalise : bool
        Scale each voxel's weights to unit norm first, so that the map shows the direction of
        the tuning, not its gain (gain mostly reflects signal-to-noise).

    Returns
    -------
    scores : ndarray, shape (n_voxels, n_components)
    explained : ndarray, shape (n_components,)
        Share of the variance of each component.

    Examples
    --------
    >>> scores, explained = pca_project(np.random.randn(50, 8))
    >>> scores.shape, explained.shape
    ((50, 2), (2,))
    """
    W = np.asarray(weights, np.float64)
    if normalise:
        W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    Wc = W - W.mean(0)
    _, s, vt = np.linalg.svd(Wc, full_matrices=False)
    var = s ** 2
    return Wc @ vt[:n_components].T, var[:n_components] / var.sum()


def separation_scores(weights, labels, n_splits: int = 5, seed: int = 0, normalise: bool = True,
                      min_per_class: Optional[int] = None) -> dict:
    """How well voxel weights separate into their ROIs (or categories).

    Parameters
    ----------
    weights : array, shape (n_voxels, E)
    labels : array of str, shape (n_voxels,)
        Class of each voxel (ROI or category). Classes with fewer than ``min_per_class`` voxels
        (default ``n_splits``) are dropped.
    n_splits : int
        Folds of the stratified cross-validation of the nearest-centroid classifier.
    seed : int
    normalise : bool
        Unit-normalise each voxel's weights first (compare directions, not gains).

    Returns
    -------
    dict with
        ``nearest_centroid``: cross-validated accuracy of a nearest-centroid classifier
        (centroids from the training folds, Euclidean distance);
        ``chance``: accuracy of always guessing the most frequent class;
        ``balanced_chance``: 1 / number of classes;
        ``silhouette``: mean silhouette coefficient (cosine distance), from -1 to 1;
        ``n_voxels``, ``classes``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = np.vstack([rng.normal(3, 1, (20, 5)), rng.normal(-3, 1, (20, 5))])
    >>> s = separation_scores(W, np.repeat(["a", "b"], 20))
    >>> s["nearest_centroid"] > 0.9
    True
    """
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import NearestCentroid

    W = np.asarray(weights, np.float64)
    labels = np.asarray(labels).astype(str)
    if W.shape[0] != labels.shape[0]:
        raise ValueError(f"weights have {W.shape[0]} rows but labels {labels.shape[0]}")
    min_per_class = n_splits if min_per_class is None else min_per_class
    names, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, names[counts >= min_per_class])
    W, labels = W[keep], labels[keep]
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError("need at least two classes with enough voxels to measure separation")
    if normalise:
        W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    correct = 0
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(W, labels):
        clf = NearestCentroid().fit(W[train], labels[train])
        correct += int((clf.predict(W[test]) == labels[test]).sum())
    _, counts = np.unique(labels, return_counts=True)
    return {"nearest_centroid": correct / len(labels), "chance": float(counts.max() / counts.sum()),
            "balanced_chance": 1.0 / len(classes), "silhouette": float(silhouette_score(W, labels, metric="cosine")),
            "n_voxels": int(len(labels)), "classes": classes}


# ----------------------------------------------------------------------------------------------
# Support sets
# ----------------------------------------------------------------------------------------------
def build_support_set(kind: str, image_category, pool, k: int, rng=None, category: Optional[str] = None,
                      categories: Optional[Sequence[str]] = None) -> np.ndarray:
    """Choose ``k`` support images from ``pool`` in one of three ways.

    Parameters
    ----------
    kind : {"random", "diverse", "category"}
        ``"random"``: a uniform draw (the stimulus mix of the experiment);
        ``"diverse"``: as equal a number of images from every category as the pool allows
        (round robin over categories in random order);
        ``"category"``: only images of ``category``.
    image_category : array of str, shape (n_images,)
        Category of every image of the subject (indexed by the values in ``pool``).
    pool : array of int
        Candidate image indices (e.g. ``subject.unique_idx``).
    k : int
    rng : numpy Generator or int, optional
    category : str
        Required for ``kind="category"``.
    categories : sequence of str, optional
        Categories a diverse set draws from (default: all categories in the pool).

    Returns
    -------
    ndarray of int, shape (k,), sorted

    Raises
    ------
    ValueError
        If the pool holds fewer than ``k`` images (of ``category``).

    Examples
    --------
    >>> cats = np.array(["faces"] * 50 + ["food"] * 10)
    >>> s = build_support_set("diverse", cats, np.arange(60), 20, rng=0)
    >>> int((cats[s] == "food").sum())
    10
    """
    rng = np.random.default_rng(rng)
    cats = np.asarray(image_category)
    pool = np.asarray(pool, dtype=np.int64)
    if kind == "random":
        chosen = pool
    elif kind == "category":
        if category is None:
            raise ValueError("kind='category' needs a category")
        chosen = pool[cats[pool] == category]
    elif kind == "diverse":
        names = sorted(set(cats[pool].tolist())) if categories is None else list(categories)
        groups = [list(rng.permutation(pool[cats[pool] == c])) for c in names]
        groups = [g for g in groups if g]
        if sum(len(g) for g in groups) < k:
            raise ValueError(f"only {sum(len(g) for g in groups)} images in the pool, need {k}")
        picked = []
        while len(picked) < k:
            for g in rng.permutation(len(groups)):
                if groups[g] and len(picked) < k:
                    picked.append(groups[g].pop())
        return np.sort(np.array(picked, dtype=np.int64))
    else:
        raise ValueError(f"kind must be 'random', 'diverse' or 'category', got {kind!r}")
    if chosen.size < k:
        what = f"of category {category!r} " if kind == "category" else ""
        raise ValueError(f"only {chosen.size} images {what}in the pool, need {k}")
    return np.sort(rng.choice(chosen, size=k, replace=False))


# ----------------------------------------------------------------------------------------------
# Language -> voxel
# ----------------------------------------------------------------------------------------------
def prompt_responses(weights, bias, text_embeddings) -> np.ndarray:
    """Zero-shot predicted responses ``w . t + b`` of every voxel to every text embedding.

    Parameters
    ----------
    weights : array, shape (n_voxels, E)
    bias : array, shape (n_voxels,)
    text_embeddings : array, shape (n_prompts, E)
        In the same space as the images the encoders were fitted on (CLIP text tower for CLIP
        image features; :class:`~braincorl_lite.simulate.TextEncoder` for SimNSD).

    Returns
    -------
    ndarray, shape (n_voxels, n_prompts)

    Examples
    --------
    >>> prompt_responses(np.array([[1.0, 0.0]]), np.array([0.5]), np.eye(2))
    array([[1.5, 0.5]])
    """
    W = np.asarray(weights, np.float64)
    T = np.asarray(text_embeddings, np.float64)
    if W.shape[1] != T.shape[1]:
        raise ValueError(f"weights have {W.shape[1]} features but text embeddings {T.shape[1]}")
    return W @ T.T + np.asarray(bias, np.float64)[:, None]


def classify_by_prompts(weights, bias, text_embeddings, labels: Sequence[str]) -> np.ndarray:
    """Label of the prompt with the highest predicted response, per voxel.

    ``labels[i]`` names ``text_embeddings[i]``. The bias (and any offset shared by all prompts,
    such as the modality gap) adds the same amount to every prompt of a voxel, so it never
    changes the winner.

    Examples
    --------
    >>> classify_by_prompts(np.array([[1.0, 0.0], [0.0, 2.0]]), np.zeros(2), np.eye(2), ["a", "b"])
    array(['a', 'b'], dtype='<U1')
    """
    labels = np.asarray(labels)
    if len(labels) != len(text_embeddings):
        raise ValueError(f"{len(labels)} labels for {len(text_embeddings)} text embeddings")
    return labels[np.argmax(prompt_responses(weights, bias, text_embeddings), axis=1)]


def prompt_confusion(roi, predicted, roi_category: Optional[Mapping[str, str]] = None,
                     categories: Sequence[str] = FLOC_CATEGORIES, by: str = "roi"):
    """Confusion table of prompt classification and the accuracy of each ROI (or category).

    Parameters
    ----------
    roi : array of str, shape (n_voxels,)
    predicted : array of str, shape (n_voxels,)
        Winning prompt category per voxel (:func:`classify_by_prompts`).
    roi_category : mapping ROI -> category, optional
        Default :data:`ROI_CATEGORY`. Voxels of ROIs not in it are skipped.
    categories : sequence of str
        Column order (the prompt categories).
    by : {"roi", "category"}
        One row per ROI, or pool the ROIs of each category (e.g. EBA + FBA = bodies).

    Returns
    -------
    pandas.DataFrame
        Rows: ROIs (or categories); columns: share of the voxels won by each prompt category
        (rows sum to 1), then ``accuracy`` (share won by the ROI's own category) and ``n_voxels``.
    """
    import pandas as pd

    roi_category = ROI_CATEGORY if roi_category is None else roi_category
    roi = np.asarray(roi)
    predicted = np.asarray(predicted)
    if by not in ("roi", "category"):
        raise ValueError(f"by must be 'roi' or 'category', got {by!r}")
    keep = np.isin(roi, list(roi_category))
    truth = np.array([roi_category[r] for r in roi[keep]])
    group = roi[keep] if by == "roi" else truth
    order = [r for r in roi_category if r in set(group)] if by == "roi" else \
        [c for c in categories if c in set(group)]
    rows = []
    for g in order:
        m = group == g
        shares = {c: float(np.mean(predicted[keep][m] == c)) for c in categories}
        own = roi_category[g] if by == "roi" else g
        rows.append({by: g, **shares, "accuracy": shares.get(own, 0.0), "n_voxels": int(m.sum())})
    return pd.DataFrame(rows).set_index(by)


def modality_gap(image_embeddings, text_embeddings) -> dict:
    """How far text embeddings sit from image embeddings (CLIP's "modality gap").

    Parameters
    ----------
    image_embeddings : array, shape (n_images, E)
    text_embeddings : array, shape (n_texts, E)

    Returns
    -------
    dict with ``centroid_distance`` (norm of the difference of the two means), ``cos_image_image``,
    ``cos_text_text``, ``cos_image_text`` (mean pairwise cosines; unit-norm inputs assumed) and
    ``gap`` (the difference vector, text mean minus image mean).
    """
    X = np.asarray(image_embeddings, np.float64)
    T = np.asarray(text_embeddings, np.float64)

    def mean_cos(A, B, same):
        c = A @ B.T
        if same:
            return float(c[np.triu_indices(len(A), 1)].mean()) if len(A) > 1 else np.nan
        return float(c.mean())

    gap = T.mean(0) - X.mean(0)
    return {"centroid_distance": float(np.linalg.norm(gap)), "cos_image_image": mean_cos(X, X, True),
            "cos_text_text": mean_cos(T, T, True), "cos_image_text": mean_cos(X, T, False), "gap": gap}


def close_modality_gap(text_embeddings, image_embeddings, text_reference=None) -> np.ndarray:
    """Move text embeddings onto the image cloud: ``t - mean(text) + mean(image)``, renormalised.

    Parameters
    ----------
    text_embeddings : array, shape (n_texts, E)
    image_embeddings : array, shape (n_images, E)
    text_reference : array, shape (m, E), optional
        Texts whose mean defines the text centroid (default: ``text_embeddings`` themselves;
        pass a larger set of captions for a better estimate).

    Returns
    -------
    ndarray, float32, shape (n_texts, E), unit norm
    """
    T = np.asarray(text_embeddings, np.float64)
    ref = T if text_reference is None else np.asarray(text_reference, np.float64)
    out = T - ref.mean(0) + np.asarray(image_embeddings, np.float64).mean(0)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
