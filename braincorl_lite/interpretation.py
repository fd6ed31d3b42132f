"""Looking inside the in-context encoder: attention, weight geometry, support sets and language.

* attention: :func:`register_attention`, :func:`attention_spread`, :func:`top_attended`,
  :func:`topk_precision`, :func:`attention_precision_table` (does register 0 look at the images
  of a region's preferred category more often than chance?);
* geometry of the predicted weights: :func:`pca_project`, :func:`embed_2d` (UMAP when
  umap-learn is installed, as in the paper, else PCA), :func:`separation_scores`;
* support sets: :func:`build_support_set` (random, category-balanced or single-category);
* language: :func:`prompt_responses`, :func:`classify_by_prompts`, :func:`prompt_confusion`,
  :func:`modality_gap`, :func:`close_modality_gap`.

Everything takes plain arrays, so it works on SimNSD and on real NSD alike.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .baselines import predict_linear
from .cortex import ROI_CATEGORIES, ROI_CATEGORY

__all__ = ["ROI_CATEGORY", "CATEGORY_PROMPTS", "register_attention", "attention_spread", "top_attended",
           "topk_precision", "attention_precision_table", "pca_project", "embed_2d", "separation_scores",
           "build_support_set", "prompt_responses", "classify_by_prompts", "prompt_confusion", "modality_gap",
           "close_modality_gap"]


#: one text prompt per ROI category (the prompts of the language chapter)
CATEGORY_PROMPTS: Dict[str, str] = {"faces": "a photo of a face", "bodies": "a person's body", "places": "a house",
                                    "food": "food on a plate", "words": "written words"}


# -------------------------------------------------------------------------- attention
def register_attention(model, support_x, support_y, layer: int = -1, register: int = 0,
                       chunk_size: int = 128, heads: str = "mean") -> np.ndarray:
    """Attention of one register token to the support images (K, E), per voxel of ``support_y`` (n_voxels, K).

    The model runs in eval mode without gradients (its mode is restored), ``chunk_size`` voxels
    at a time. ``layer`` is the block read (default: the last, as in the paper), ``register`` the
    token (0: the encoder's readout). Returns float32 probabilities (n_voxels, K) in input order,
    averaged over heads (``heads="all"``: (n_voxels, n_heads, K)); the mass on the registers is
    left out, so rows sum to slightly less than 1.

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
    """How widely attention is spread: ``exp(entropy) / N`` per row of probabilities over N tokens.

    1 for uniform attention, ``1 / N`` when all the mass is on one token.

    >>> attention_spread([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    array([1.  , 0.25])
    """
    p = np.asarray(probabilities, dtype=np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)
    return np.exp(entropy) / p.shape[-1]


def top_attended(attention, n: int = 10) -> np.ndarray:
    """Indices (n_voxels, n) of each voxel's ``n`` most attended support images, most attended first.

    >>> top_attended(np.array([[0.1, 0.5, 0.2]]), 2)
    array([[1, 2]])
    """
    a = np.asarray(attention)
    if not 1 <= n <= a.shape[1]:
        raise ValueError(f"n must lie in [1, {a.shape[1]}], got {n}")
    return np.argsort(-a, axis=1, kind="stable")[:, :n]


def topk_precision(attention, image_category, target, n: int = 10) -> np.ndarray:
    """Share of each voxel's ``n`` most attended support images whose category is ``target``.

    ``image_category`` has one entry per support image; ``target`` is one category, or one per voxel.

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
    """Top-``n`` precision of attention (n_voxels, K) per ROI, beside chance.

    ROIs missing from ``roi_category`` (default :data:`~braincorl_lite.cortex.ROI_CATEGORY`; e.g.
    "other") are skipped.
    Returns a DataFrame indexed by ROI with ``category, n_voxels, precision, chance`` (the
    category's share of the support set) and ``ratio``; with the support ``responses``
    (n_voxels, K), also ``precision_top_response`` (the ``n`` highest responses instead).
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


# -------------------------------------------------------------------------- geometry of the predicted weights
def _unit_rows(W):
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def pca_project(weights, n_components: int = 2, normalise: bool = True):
    """Principal-component ``scores`` (n_voxels, n_components) of voxel weights and the share of
    variance each component ``explained`` (sklearn PCA).

    ``normalise`` scales each voxel's weights to unit norm first: the map then shows the direction
    of the tuning, not its gain (gain mostly reflects signal-to-noise).

    >>> scores, explained = pca_project(np.random.randn(50, 8))
    >>> scores.shape, explained.shape
    ((50, 2), (2,))
    """
    from sklearn.decomposition import PCA

    W = np.asarray(weights, np.float64)
    pca = PCA(n_components).fit(_unit_rows(W) if normalise else W)
    return pca.transform(_unit_rows(W) if normalise else W), pca.explained_variance_ratio_


def embed_2d(weights, method: str = "auto", normalise: bool = True, seed: int = 0, **umap_kwargs):
    """A 2-D map of voxel weights: UMAP (as in the paper) when umap-learn is installed, else PCA.

    ``method="auto"`` falls back to PCA when umap-learn cannot be imported; ``"umap"`` then
    raises :class:`ImportError`. ``normalise`` unit-normalises each voxel's weights first; ``seed``
    is UMAP's random state. Returns ``coords`` (n_voxels, 2) and ``name``, what made the map, for
    the figure: ``"UMAP"``, ``"PCA"`` or ``"PCA (umap-learn not installed)"``.

    >>> coords, name = embed_2d(np.random.randn(30, 8), method="pca")
    >>> coords.shape, name
    ((30, 2), 'PCA')
    """
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"method must be 'auto', 'umap' or 'pca', got {method!r}")
    W = np.asarray(weights, np.float64)
    if method != "pca":
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise ImportError("embed_2d(method='umap') needs umap-learn: pip install umap-learn") from None
        else:
            reducer = umap.UMAP(n_components=2, random_state=seed, **{"metric": "cosine", **umap_kwargs})
            return reducer.fit_transform(_unit_rows(W) if normalise else W), "UMAP"
    coords, _ = pca_project(W, 2, normalise)
    return coords, "PCA" if method == "pca" else "PCA (umap-learn not installed)"


def separation_scores(weights, labels, n_splits: int = 5, seed: int = 0, normalise: bool = True,
                      min_per_class: Optional[int] = None) -> dict:
    """How well voxel weights separate into their ROIs (or categories).

    ``labels`` gives each voxel's class (ROI or category); classes with fewer than
    ``min_per_class`` (default ``n_splits``) voxels are dropped. ``normalise`` compares
    directions, not gains.

    Returns
    -------
    dict with ``nearest_centroid`` (accuracy of a nearest-centroid classifier, stratified
    ``n_splits``-fold cross-validation), ``chance`` (always the most frequent class),
    ``balanced_chance`` (1 / number of classes), ``silhouette`` (cosine distance, -1 to 1),
    ``n_voxels`` and ``classes``.

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
        W = _unit_rows(W)
    correct = 0
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(W, labels):
        clf = NearestCentroid().fit(W[train], labels[train])
        correct += int((clf.predict(W[test]) == labels[test]).sum())
    _, counts = np.unique(labels, return_counts=True)
    return {"nearest_centroid": correct / len(labels), "chance": float(counts.max() / counts.sum()),
            "balanced_chance": 1.0 / len(classes), "silhouette": float(silhouette_score(W, labels, metric="cosine")),
            "n_voxels": int(len(labels)), "classes": classes}


# -------------------------------------------------------------------------- support sets
def build_support_set(kind: str, image_category, pool, k: int, rng=None, category: Optional[str] = None,
                      categories: Optional[Sequence[str]] = None) -> np.ndarray:
    """Choose ``k`` support images from ``pool`` in one of three ways.

    ``kind="random"``: a uniform draw (the stimulus mix of the experiment); ``"diverse"``: as
    equal a number of images from every category (default: all in the pool) as the pool allows;
    ``"category"``: only images of ``category``. ``image_category`` holds the category of every
    image of the subject, ``pool`` candidate indices (e.g. ``subject.unique_idx``). Returns ``k``
    sorted indices; :class:`ValueError` if the pool holds fewer.

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


# -------------------------------------------------------------------------- language -> voxel
def prompt_responses(weights, bias, text_embeddings) -> np.ndarray:
    """Zero-shot predicted responses ``w . t + b`` of every voxel to every text embedding.

    ``weights`` (n_voxels, E) and ``bias`` (n_voxels,) are the encoders; ``text_embeddings``
    (n_prompts, E) live in the image space they were fitted on (CLIP's text tower, or
    :class:`~braincorl_lite.simulate.TextEncoder` for SimNSD). Returns (n_voxels, n_prompts).

    >>> prompt_responses(np.array([[1.0, 0.0]]), np.array([0.5]), np.eye(2))
    array([[1.5, 0.5]])
    """
    W, T = np.asarray(weights), np.asarray(text_embeddings)
    if W.shape[1] != T.shape[1]:
        raise ValueError(f"weights have {W.shape[1]} features but text embeddings {T.shape[1]}")
    return predict_linear(T, W, bias).T


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
                     categories: Sequence[str] = ROI_CATEGORIES, by: str = "roi"):
    """Confusion table of prompt classification and the accuracy of each ROI (or category).

    ``predicted`` is the winning prompt category per voxel (:func:`classify_by_prompts`);
    voxels of ROIs missing from ``roi_category`` (default
    :data:`~braincorl_lite.cortex.ROI_CATEGORY`) are skipped.
    ``categories`` orders the columns; ``by="category"`` pools the ROIs of each category.

    Returns
    -------
    pandas.DataFrame
        One row per ROI (or category): the share of voxels won by each prompt category (rows sum
        to 1), ``accuracy`` (share won by the own category) and ``n_voxels``.
    """
    import pandas as pd

    roi_category = ROI_CATEGORY if roi_category is None else roi_category
    if by not in ("roi", "category"):
        raise ValueError(f"by must be 'roi' or 'category', got {by!r}")
    roi = np.asarray(roi)
    keep = np.isin(roi, list(roi_category))
    group = roi[keep] if by == "roi" else np.array([roi_category[r] for r in roi[keep]])
    order = [g for g in (roi_category if by == "roi" else categories) if g in set(group)]
    table = pd.crosstab(pd.Series(group, name=by), np.asarray(predicted)[keep], normalize="index")
    table = table.reindex(index=order, columns=list(categories), fill_value=0.0).rename_axis(columns=None)
    own = {g: roi_category[g] if by == "roi" else g for g in order}
    table["accuracy"] = [table.loc[g, c] if c in table.columns else 0.0 for g, c in own.items()]
    table["n_voxels"] = pd.Series(group).value_counts().reindex(order).to_numpy()
    return table


def modality_gap(image_embeddings, text_embeddings) -> dict:
    """How far text embeddings sit from image embeddings (CLIP's "modality gap").

    Returns a dict with ``centroid_distance`` (norm of the difference of the two means), ``cos_image_image``,
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

    ``text_reference`` (default: the texts themselves; better, many captions) defines the text
    mean. Returns float32 unit vectors, shape (n_texts, E).
    """
    T = np.asarray(text_embeddings, np.float64)
    ref = T if text_reference is None else np.asarray(text_reference, np.float64)
    out = T - ref.mean(0) + np.asarray(image_embeddings, np.float64).mean(0)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)
