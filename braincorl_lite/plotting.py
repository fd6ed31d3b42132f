"""Figures shared by the book's chapters: learning curves, cortical maps, simulation labels.

Every figure made from simulated data carries a visible label saying so (:func:`mark_simulated`);
the plotting functions here add it themselves when they are given the data.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .datasets import dataset_label

__all__ = [
    "METHOD_STYLE",
    "mark_simulated",
    "plot_ev_vs_k",
    "surface_maps",
    "voxels_to_surface",
    "plot_similarity_matrix",
    "plot_embedding_2d",
    "plot_training_log",
    "STAGE_COLORS",
    "CATEGORY_COLORS",
    "plot_attention_examples",
    "plot_precision_vs_chance",
    "plot_prompt_confusion",
    "plot_weight_scatter",
    "plot_roi_bars",
    "plot_ev_vs_k_by_roi",
]

#: colour, label and line style of each method, the same in every chapter
METHOD_STYLE = {
    "braincorl": dict(color="#d62728", label="BraInCoRL-lite", marker="o"),
    "braincorl_truth": dict(color="#ff9896", label="BraInCoRL-lite, truth-supervised (ablation)", marker="o",
                            linestyle="--"),
    "ridge": dict(color="#1f77b4", label="ridge (CV)", marker="s"),
    "ridge_paper": dict(color="#17becf", label="ridge (paper protocol)", marker="s", linestyle="--"),
    "oracle": dict(color="#2ca02c", label="Bayes oracle", marker="^"),
    "fully_trained": dict(color="0.2", label="fully trained", linestyle=":"),
    "anatomical": dict(color="#9467bd", label="anatomical average", linestyle="--"),
}

_N_VERTICES = 10242  # per fsaverage5 hemisphere


def mark_simulated(fig, data, bottom: float = 0.05):
    """Write the data's provenance on ``fig`` (e.g. "SimNSD (simulated data, not NSD)").

    Simulated data are labelled in red so that no figure of a simulation can pass for real data;
    real data get a grey source line. The label sits in the bottom-right corner; on a
    constrained-layout figure a strip of height ``bottom`` (figure fraction) is kept free for it,
    so that it never overlaps an axis label. Returns ``fig``.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from braincorl_lite.datasets import load_dataset
    >>> fig, ax = plt.subplots(layout="constrained")
    >>> _ = mark_simulated(fig, load_dataset("simnsd", size="tiny"))
    >>> [t.get_text() for t in fig.texts], fig.get_layout_engine().get()["rect"][1]
    (['SimNSD (simulated data, not NSD)'], 0.05)
    """
    label = dataset_label(data)
    simulated = "simulated" in label
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
        engine.set(rect=(0, bottom, 1, 1 - bottom))
    fig.text(0.995, 0.005, label, ha="right", va="bottom", fontsize=8,
             color="#b22222" if simulated else "0.4", style="italic")
    return fig


def plot_ev_vs_k(table, methods: Optional[Sequence[str]] = None, roi: str = "all", ax=None, data=None,
                 paper: bool = True, title: Optional[str] = None):
    """Explained variance against the number of support images K, one line per method.

    Parameters
    ----------
    table : pandas.DataFrame
        The table of :func:`~braincorl_lite.evaluation.evaluate_subject` (``method, k, roi, ev, draw``).
        Lines show the mean over support draws, bands the range.
    methods : sequence of str, optional
        Methods to draw (default: every method in the table). ``fully_trained`` and ``anatomical``
        do not depend on K and are drawn as horizontal lines.
    roi : str
        ``"all"`` or one ROI name.
    ax : matplotlib Axes, optional
    data : SubjectData or dataset, optional
        Used to label the figure as simulated when it is.
    paper : bool
        Overlay the published NSD subject-1 curves (dashed, labelled as the paper's NSD numbers).
    """
    import matplotlib.pyplot as plt

    from .evaluation import PAPER_BRAINCORL, PAPER_RIDGE

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    t = table[table.roi == roi]
    methods = list(dict.fromkeys(t.method)) if methods is None else list(methods)
    ks = sorted(k for k in t[t.method.isin([m for m in methods if m not in ("fully_trained", "anatomical")])].k.unique())
    for m in methods:
        style = dict(METHOD_STYLE.get(m, dict(label=m)))
        rows = t[t.method == m]
        if rows.empty:
            continue
        if m in ("fully_trained", "anatomical"):
            ax.axhline(rows.ev.mean(), color=style["color"], linestyle=style["linestyle"], lw=1.3,
                       label=f"{style['label']} ({rows.k.iloc[0]} images)" if m == "fully_trained" else style["label"])
            continue
        g = rows.groupby("k").ev
        mean, lo, hi = g.mean(), g.min(), g.max()
        ax.plot(mean.index, mean.values, lw=2, **style)
        if (hi - lo).max() > 0:
            ax.fill_between(mean.index, lo.values, hi.values, color=style["color"], alpha=0.15, lw=0)
    if paper and roi == "all":
        for curve, m, name in ((PAPER_BRAINCORL, "braincorl", "BraInCoRL"), (PAPER_RIDGE, "ridge", "ridge")):
            if m in methods:
                k = sorted(curve)
                ax.plot(k, [curve[x] for x in k], color=METHOD_STYLE[m]["color"], lw=1, ls=":", alpha=0.7,
                        marker=".", label=f"paper: {name} (NSD subj. 1, published)")
    ax.set_xscale("log")
    if ks:
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
    ax.set_xlabel("support images K")
    ax.set_ylabel("explained variance (shared images)")
    ax.set_title(title or ("mean over voxels" if roi == "all" else roi))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if data is not None:
        mark_simulated(ax.figure, data)
    return ax


def voxels_to_surface(data, values, fill_mm: float = 0.0) -> np.ndarray:
    """Scatter one value per voxel onto both fsaverage5 hemispheres (NaN where there is no voxel).

    ``fill_mm > 0`` gives vertices without a voxel the value of the nearest voxel of the same
    hemisphere within that distance (pial coordinates), for display only: a subject's voxels
    cover a subset of vertices, and a surface plot colours only faces whose corners all have a
    value. Returns an array of shape ``(20484,)``: left hemisphere first, then right.
    Raises a clear error for volumetric data (real NSD voxels have ``vertex = -1``).
    """
    values = np.asarray(values, float)
    if values.shape != (data.n_voxels,):
        raise ValueError(f"expected one value per voxel ({data.n_voxels}), got shape {values.shape}")
    if np.any(data.vertex < 0):
        raise ValueError(f"{data.subject} has volumetric voxels (vertex = -1): surface maps need surface "
                         "data such as SimNSD; plot real NSD volumes with meta['voxel_ijk'] instead")
    out = np.full(2 * _N_VERTICES, np.nan)
    out[data.vertex] = values
    if fill_mm > 0:
        from scipy.spatial import cKDTree

        from .simulate import fsaverage5_mesh

        coords, hemi = fsaverage5_mesh()
        for h in ("L", "R"):
            src = data.vertex[hemi[data.vertex] == h]
            if src.size == 0:
                continue
            dst = np.flatnonzero((hemi == h) & np.isnan(out))
            dist, nearest = cKDTree(coords[src]).query(coords[dst], distance_upper_bound=fill_mm)
            ok = np.isfinite(dist)
            out[dst[ok]] = out[src[nearest[ok]]]
    return out


def surface_maps(data, maps: Dict[str, np.ndarray], views: Sequence[str] = ("ventral", "lateral"),
                 cmap: str = "inferno", vmin: Optional[float] = None, vmax: Optional[float] = None,
                 symmetric: bool = False, colorbar_label: str = "", title: Optional[str] = None,
                 panel_size: float = 2.6, fill_mm: float = 4.0):
    """Maps of per-voxel values on the inflated fsaverage5 cortex, one row per map.

    Parameters
    ----------
    data : SubjectData
        A surface subject (SimNSD). Its ``vertex`` field places the voxels.
    maps : dict title -> array (n_voxels,)
        The maps to draw; all share one colour scale so that rows can be compared.
    views : sequence of {"ventral", "lateral", "medial", "posterior"}
        Views per hemisphere (columns: left and right hemisphere for each view).
    cmap, vmin, vmax, symmetric
        Colour scale (``symmetric`` centres it on 0; by default it spans the 2nd-98th percentile).
    colorbar_label, title : str
    fill_mm : float
        Display fill-in radius around the subject's voxels (see :func:`voxels_to_surface`);
        0 draws only faces whose three corners are voxels.

    Returns
    -------
    matplotlib Figure (labelled as simulated when the data are)

    Examples
    --------
    >>> from braincorl_lite.datasets import load_dataset
    >>> s = load_dataset("simnsd", size="tiny")[0]
    >>> fig = surface_maps(s, {"noise ceiling": s.noise_ceiling}, views=("ventral",))
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from nilearn import datasets, plotting

    fs = datasets.fetch_surf_fsaverage("fsaverage5")  # bundled with nilearn: no download
    surf = {title_: voxels_to_surface(data, v, fill_mm) for title_, v in maps.items()}
    allv = np.concatenate([v[np.isfinite(v)] for v in surf.values()])
    if vmin is None or vmax is None:
        lo, hi = (np.percentile(allv, [2, 98]) if allv.size else (0.0, 1.0))
        if symmetric:
            hi = max(abs(lo), abs(hi))
            lo = -hi
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    n_rows, n_cols = len(surf), 2 * len(views)
    fig, axes = plt.subplots(n_rows, n_cols, subplot_kw={"projection": "3d"},
                             figsize=(panel_size * n_cols + 0.8, panel_size * 0.75 * n_rows + 0.6), squeeze=False)
    for r, (name, values) in enumerate(surf.items()):
        for c, (view, hemi) in enumerate((v, h) for v in views for h in ("left", "right")):
            part = values[:_N_VERTICES] if hemi == "left" else values[_N_VERTICES:]
            ax = axes[r, c]
            plotting.plot_surf_stat_map(fs[f"infl_{hemi}"], part, hemi=hemi, view=view,
                                        bg_map=fs[f"sulc_{hemi}"], axes=ax, colorbar=False, cmap=cmap,
                                        vmin=vmin, vmax=vmax, symmetric_cbar=False)
            ax.set_title(f"{hemi[0].upper()}H {view}", fontsize=8, pad=-4)
            ax.set_box_aspect(None, zoom=1.35)
        axes[r, 0].text2D(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center",
                          ha="center", fontsize=10, fontweight="bold")
    fig.subplots_adjust(left=0.04, right=0.88, top=0.9 if title else 0.97, bottom=0.04, wspace=0.0, hspace=0.05)
    cax = fig.add_axes([0.9, 0.2, 0.015, 0.6])
    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap=cmap), cax=cax, label=colorbar_label)
    if title:
        fig.suptitle(title)
    mark_simulated(fig, data)
    return fig


# ---------------------------------------------------------------------- chapters 1-2: embeddings, training logs
def plot_similarity_matrix(sim, labels: Sequence[str], ax=None, title: str = "cosine similarity",
                           vmin: float = -1.0, vmax: float = 1.0, annotate: bool = True, data=None):
    """A labelled heat map of a (cosine) similarity matrix.

    Parameters
    ----------
    sim : ndarray (n, n)
    labels : sequence of str, length n
    ax : matplotlib Axes, optional
    annotate : bool
        Write the value in each cell (for small matrices).
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    sim = np.asarray(sim, float)
    n = len(labels)
    if sim.shape != (n, n):
        raise ValueError(f"sim must be ({n}, {n}) for {n} labels, got {sim.shape}")
    if ax is None:
        size = 1.2 + 0.55 * n
        _, ax = plt.subplots(figsize=(size + 1.2, size), constrained_layout=True)
    im = ax.imshow(sim, cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels)
    if annotate:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(sim[i, j]) > 0.6 * max(abs(vmin), abs(vmax)) else "black")
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="cosine")
    ax.set_title(title)
    if data is not None:
        mark_simulated(ax.figure, data)
    return ax


def plot_embedding_2d(coords, labels, ax=None, title: str = "", xlabel: str = "PC 1", ylabel: str = "PC 2",
                      order: Optional[Sequence[str]] = None, s: float = 8.0, data=None):
    """Scatter of 2-D embedding coordinates, one colour per label, with a legend.

    Parameters
    ----------
    coords : ndarray (n, 2)
    labels : sequence of str, length n
    order : sequence of str, optional
        Legend order (default: sorted labels).
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    coords = np.asarray(coords, float)
    labels = np.asarray(labels).astype(str)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(labels):
        raise ValueError(f"coords must be (n, 2) with one label per row, got {coords.shape} and {len(labels)} labels")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.8), constrained_layout=True)
    names = list(order) if order is not None else sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        m = labels == name
        ax.scatter(coords[m, 0], coords[m, 1], s=s, color=cmap(i % cmap.N), label=f"{name} ({m.sum()})",
                   alpha=0.7, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2)
    if data is not None:
        mark_simulated(ax.figure, data)
    return ax


#: colour of each training stage in loss-curve figures
STAGE_COLORS = {"pretrain": "#1f77b4", "extend": "#ff7f0e", "finetune": "#2ca02c"}


def plot_training_log(log, ax=None, window: int = 25, logy: bool = True, title: str = "training loss",
                      label: Optional[str] = None, data=None):
    """Loss per step of a training run, coloured by stage, with a running mean.

    Parameters
    ----------
    log : pandas.DataFrame
        :func:`braincorl_lite.train.read_log` output (``stage, step, loss``); steps are counted
        across stages on the x axis and stage boundaries are marked.
    window : int
        Width of the centred running mean (raw losses are drawn faintly).
    label : str, optional
        Prefix of the legend entries (to overlay several runs).
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    x = np.arange(len(log))
    loss = log.loss.to_numpy(float)
    stages = log.stage.to_numpy().astype(str)
    for name in dict.fromkeys(stages):
        m = stages == name
        color = STAGE_COLORS.get(name, "0.3")
        smooth = log.loss[m].rolling(max(1, min(window, int(m.sum()))), center=True, min_periods=1).mean()
        ax.plot(x[m], loss[m], color=color, alpha=0.25, lw=0.7)
        ax.plot(x[m], smooth.to_numpy(), color=color, lw=2, label=f"{label + ': ' if label else ''}{name}")
        start = x[m][0]
        if start > 0:
            ax.axvline(start - 0.5, color="0.5", lw=0.8, ls=":")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training step (all stages)")
    ax.set_ylabel("loss (relative to response variance)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if data is not None:
        mark_simulated(ax.figure, data)
    return ax


# ---------------------------------------------------------------------- chapters 5-6: attention, language
#: colour of each image category (the floc categories first)
CATEGORY_COLORS = {"faces": "#d62728", "bodies": "#ff7f0e", "places": "#2ca02c", "food": "#8c564b",
                   "words": "#9467bd", "animals": "#17becf", "vehicles": "#1f77b4", "objects": "#7f7f7f",
                   "plants": "#bcbd22", "sports": "#e377c2"}


def plot_attention_examples(attention, captions, categories, titles: Sequence[str], n_top: int = 6,
                            data=None, ncols: int = 2, caption_width: int = 34, responses=None):
    """The most attended support images of a few voxels: one bar chart per voxel.

    Parameters
    ----------
    attention : ndarray (n_examples, K)
        Attention of each example voxel to its K support images.
    captions, categories : sequence of str, length K
        Caption and category of each support image (bars are coloured by category).
    titles : sequence of str, length n_examples
        Panel titles (e.g. "FFA voxel 123").
    n_top : int
        Bars per panel, most attended on top.
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.
    ncols : int
    caption_width : int
        Captions longer than this are shortened.
    responses : ndarray (n_examples, K), optional
        The voxels' support responses; their z-scores are written next to the bars (attention
        often goes to images that drive a voxel strongly down as well as up).

    Returns
    -------
    matplotlib Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    attention = np.atleast_2d(np.asarray(attention, float))
    captions = np.asarray(captions).astype(str)
    categories = np.asarray(categories).astype(str)
    if len(titles) != len(attention) or captions.shape != (attention.shape[1],) or categories.shape != captions.shape:
        raise ValueError("need one title per example and one caption and category per support image")
    n = len(attention)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 0.32 * n_top * nrows + 1.0 * nrows + 0.6),
                             squeeze=False, constrained_layout=True)
    K = attention.shape[1]
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.set_visible(False)
            continue
        top = np.argsort(-attention[i], kind="stable")[:n_top]
        labels = [c if len(c) <= caption_width else c[:caption_width - 1] + "…" for c in captions[top]]
        ax.barh(np.arange(n_top), attention[i, top] * K,
                color=[CATEGORY_COLORS.get(c, "0.6") for c in categories[top]])
        ax.set_yticks(np.arange(n_top))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        if responses is not None:
            r = np.asarray(responses, float)[i]
            z = (r - r.mean()) / max(r.std(), 1e-12)
            for j, t in enumerate(top):
                ax.text(attention[i, t] * K, j, f" z={z[t]:+.1f}", va="center", fontsize=7)
            ax.set_xlim(0, attention[i, top].max() * K * 1.2)
        ax.axvline(1.0, color="0.4", lw=0.8, ls=":")
        ax.set_xlabel("attention × K (1 = uniform)", fontsize=8)
        ax.set_title(titles[i], fontsize=9)
    shown = [c for c in CATEGORY_COLORS if c in set(categories.tolist())]
    fig.legend([Patch(color=CATEGORY_COLORS[c]) for c in shown], shown, loc="outside lower center",
               ncol=min(len(shown), 5), fontsize=8, frameon=False)
    if data is not None:
        mark_simulated(fig, data)
    return fig


def plot_precision_vs_chance(table, ax=None, title: str = "top-attended images of the preferred category",
                             data=None):
    """Bars of attention precision per ROI beside chance (and the top responses when present).

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`braincorl_lite.interpretation.attention_precision_table` output (index ROI; columns
        ``category``, ``precision``, ``chance`` and optionally ``precision_top_response``).
    ax : matplotlib Axes, optional
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    cols = [("precision", "top-attended (register 0)", "#d62728"),
            ("precision_top_response", "top measured responses", "#1f77b4"),
            ("chance", "chance (share in support set)", "0.65")]
    cols = [c for c in cols if c[0] in table.columns]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(table) + 2), 3.6), constrained_layout=True)
    x = np.arange(len(table))
    width = 0.8 / len(cols)
    for j, (col, label, color) in enumerate(cols):
        ax.bar(x + (j - (len(cols) - 1) / 2) * width, table[col].to_numpy(float), width, label=label, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r}\n({c})" for r, c in zip(table.index, table["category"])], fontsize=8)
    ax.set_ylabel("share of images of the ROI's category")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    if data is not None:
        mark_simulated(ax.figure, data)
    return ax


def plot_prompt_confusion(table, ax=None, title: str = "which prompt wins?", data=None,
                          paper: Optional[Dict[str, str]] = None):
    """Heat map of a prompt-classification confusion table, with each row's accuracy.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`braincorl_lite.interpretation.prompt_confusion` output: rows ROIs (or categories),
        one column per prompt category with shares, then ``accuracy`` and ``n_voxels``.
    ax : matplotlib Axes, optional
    paper : dict row -> str, optional
        Text added to a row's label (e.g. the paper's NSD accuracy).
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    cats = [c for c in table.columns if c not in ("accuracy", "n_voxels")]
    M = table[cats].to_numpy(float)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 * len(cats) + 3.2, 0.45 * len(table) + 1.6), constrained_layout=True)
    im = ax.imshow(M, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if M[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats)
    ax.set_xlabel("winning prompt category")
    paper = paper or {}
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels([f"{r} (n={int(n)}, acc {a:.2f}{'; ' + paper[r] if r in paper else ''})"
                        for r, n, a in zip(table.index, table["n_voxels"], table["accuracy"])], fontsize=8)
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="share of voxels")
    ax.set_title(title)
    if data is not None:
        mark_simulated(ax.figure, data)
    return ax


# ---------------------------------------------------------------------- chapters 3-4: few-shot inference, scaling
def plot_weight_scatter(true_W, estimates: Dict[str, np.ndarray], voxels: Sequence[int], data=None,
                        titles: Optional[Sequence[str]] = None, panel_size: float = 3.0):
    """Estimated against true encoder weights for a few voxels, one panel per voxel.

    Parameters
    ----------
    true_W : ndarray (n_voxels, n_features)
        The true weights (simulated data only).
    estimates : dict method -> ndarray (n_voxels, n_features)
        Estimated weights; methods named as in :data:`METHOD_STYLE` get its colours.
    voxels : sequence of int
        The voxels to show.
    titles : sequence of str, optional
        One title per voxel (default: the voxel index).
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Figure
    """
    import matplotlib.pyplot as plt

    voxels = list(voxels)
    fig, axes = plt.subplots(1, len(voxels), figsize=(panel_size * len(voxels), panel_size + 0.5),
                             constrained_layout=True, squeeze=False)
    for ax, v, t in zip(axes[0], voxels, titles or [f"voxel {v}" for v in voxels]):
        x = np.asarray(true_W[v], float)
        for name, W in estimates.items():
            y = np.asarray(W[v], float)
            cos = float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-12))
            style = METHOD_STYLE.get(name, dict(label=name))
            ax.scatter(x, y, s=5, alpha=0.45, color=style.get("color"), label=f"{style['label']} (cos {cos:.2f})")
        lim = np.abs(np.concatenate([x] + [np.asarray(W[v], float) for W in estimates.values()])).max() * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=0.8, ls="--")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("true weight")
        ax.set_title(t, fontsize=10)
        ax.legend(fontsize=7, frameon=False, loc="upper left", markerscale=2)
    axes[0, 0].set_ylabel("estimated weight")
    if data is not None:
        mark_simulated(fig, data)
    return fig


def plot_roi_bars(table, methods: Optional[Sequence[str]] = None, ax=None, data=None,
                  ylabel: str = "mean explained variance (shared images)", title: str = ""):
    """Grouped bar chart of a per-ROI table, one bar per method and ROI.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per ROI (index), one column per method (e.g. the output of
        :func:`braincorl_lite.metrics.roi_summary`); other columns such as ``n_voxels`` are ignored
        unless named in ``methods``.
    methods : sequence of str, optional
        Columns to draw (default: every column but ``n_voxels``).
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    methods = [c for c in table.columns if c != "n_voxels"] if methods is None else list(methods)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(table) * max(len(methods), 2) / 2 + 2), 3.8),
                             constrained_layout=True)
    width = 0.8 / len(methods)
    pos = np.arange(len(table))
    for j, m in enumerate(methods):
        style = METHOD_STYLE.get(m, dict(label=m))
        ax.bar(pos + (j - (len(methods) - 1) / 2) * width, table[m].to_numpy(float), width,
               color=style.get("color"), label=style["label"], edgecolor="white", lw=0.3)
    labels = [f"{r}\n(n={int(n)})" for r, n in zip(table.index, table["n_voxels"])] \
        if "n_voxels" in table.columns else [str(r) for r in table.index]
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncol=min(len(methods), 3))
    if data is not None:
        mark_simulated(ax.figure, data)
    return ax


def plot_ev_vs_k_by_roi(table, rois: Optional[Sequence[str]] = None, methods: Optional[Sequence[str]] = None,
                        data=None, ncols: int = 5, panel_size: float = 2.4):
    """Learning curves per ROI as small multiples (one :func:`plot_ev_vs_k` panel per ROI).

    Parameters
    ----------
    table : pandas.DataFrame
        The table of :func:`~braincorl_lite.evaluation.evaluate_subject`.
    rois : sequence of str, optional
        ROIs to draw (default: every ROI in the table except ``"all"``, ``"other"`` last).
    methods : sequence of str, optional
        Methods to draw (default: all).
    data : dataset or SubjectData, optional
        Labels the figure as simulated when it is.

    Returns
    -------
    matplotlib Figure
    """
    import matplotlib.pyplot as plt

    if rois is None:
        rois = sorted(set(table.roi) - {"all", "other"}) + (["other"] if "other" in set(table.roi) else [])
    rois = list(rois)
    nrows = int(np.ceil(len(rois) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows + 0.9),
                             sharex=True, sharey=True, constrained_layout=True, squeeze=False)
    for ax, roi in zip(axes.flat, rois):
        n = table[(table.roi == roi)].n_voxels
        plot_ev_vs_k(table, methods=methods, roi=roi, ax=ax, paper=False,
                     title=f"{roi} ({int(n.iloc[0])} voxels)" if len(n) else roi)
        ax.get_legend().remove()
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rois):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.supxlabel("support images K", fontsize=9)
    fig.supylabel("explained variance (shared images)", fontsize=9)
    if data is not None:
        mark_simulated(fig, data)
    return fig
