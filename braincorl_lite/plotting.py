"""Figures of the book, by what they show.

* styles and provenance: :data:`METHOD_STYLE` (one colour per method in every chapter),
  :func:`mark_simulated` (every figure of a simulation says so, in red);
* curves over K and ROI summaries from the long ``method, k, roi, ev`` table (seaborn):
  :func:`plot_ev_vs_k`, :func:`plot_ev_vs_k_by_roi`, :func:`plot_roi_bars`;
* training: :func:`plot_training_log` (loss per step), :func:`plot_training_curve` (EV per step
  beside ridge and the oracle);
* matrices and maps of points: :func:`plot_similarity_matrix`, :func:`plot_prompt_confusion`,
  :func:`plot_embedding_2d`, :func:`plot_weight_scatter`;
* attention: :func:`plot_attention_examples`, :func:`plot_precision_vs_chance`;
* the cortex: :func:`surface_maps` (fsaverage5, with ROI outlines), :func:`voxels_to_surface`.

Functions that are given the data (``data=``) label the figure as simulated when it is.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import numpy as np

from .cortex import N_VERTICES, ROIS, fsaverage5_mesh, roi_labels
from .datasets import dataset_label

__all__ = ["METHOD_STYLE", "STAGE_COLORS", "CATEGORY_COLORS", "ROI_COLORS", "mark_simulated", "log_k_axis",
           "plot_ev_vs_k", "plot_ev_vs_k_by_roi", "plot_roi_bars", "plot_training_log", "plot_training_curve",
           "plot_similarity_matrix", "plot_prompt_confusion", "plot_embedding_2d", "plot_weight_scatter",
           "plot_attention_examples", "plot_precision_vs_chance", "voxels_to_surface", "surface_maps"]

# ---------------------------------------------------------------------------- styles and provenance
#: colour, label and line style of each method, the same in every chapter
#:
#: :meta hide-value:
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
#: colour of each training stage in loss-curve figures
STAGE_COLORS = {"pretrain": "#1f77b4", "extend": "#ff7f0e", "finetune": "#2ca02c"}
#: colour of each image category (the categories of the ROIs first)
#:
#: :meta hide-value:
CATEGORY_COLORS = {"faces": "#d62728", "bodies": "#ff7f0e", "places": "#2ca02c", "food": "#8c564b",
                   "words": "#9467bd", "animals": "#17becf", "vehicles": "#1f77b4", "objects": "#7f7f7f",
                   "plants": "#bcbd22", "sports": "#e377c2"}
#: outline colour of each ROI on cortical maps
#:
#: :meta hide-value:
ROI_COLORS = {"FFA": "#00e5ff", "OFA": "#0072b2", "FBA": "#ffd700", "EBA": "#e69f00", "PPA": "#39ff14",
              "OPA": "#009e73", "RSC": "#8c8cff", "VWFA": "#ff00ff", "food": "#a0522d"}

_FIXED = ("fully_trained", "anatomical")  # methods that do not depend on K


def _style(method: str, i: int = 0) -> dict:
    return dict(METHOD_STYLE.get(method, dict(label=method, color=f"C{i % 10}")))


def mark_simulated(fig, data, bottom: float = 0.05):
    """Write the data's provenance on ``fig`` (e.g. "SimNSD (simulated data, not NSD)").

    Simulated data are labelled in red, real data get a grey source line, in the bottom-right
    corner; a constrained-layout figure keeps a strip of height ``bottom`` free for it. Returns ``fig``.

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
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
        engine.set(rect=(0, bottom, 1, 1 - bottom))
    fig.text(0.995, 0.005, label, ha="right", va="bottom", fontsize=8,
             color="#b22222" if "simulated" in label else "0.4", style="italic")
    return fig


def _finish(artist, data):
    """Label ``artist``'s figure with the data's provenance (when given) and return ``artist``."""
    if data is not None:
        mark_simulated(getattr(artist, "figure", artist), data)
    return artist


def _new_ax(ax, figsize):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, layout="constrained")[1] if ax is None else ax


def log_k_axis(ax, ks: Optional[Sequence[int]] = None):
    """A log x axis for K with plain-number ticks at 1, 3, 10, 30, 100, 300, 1000, ... (not 10^1).

    Ticks are those of the 1-3-10 series within the range of ``ks`` (default: the axis limits);
    the ``ks`` themselves when fewer than two of the series fall inside.

    >>> import matplotlib.pyplot as plt
    >>> ax = log_k_axis(plt.figure().add_subplot(), [10, 30, 100, 300, 1000])
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['10', '30', '100', '300', '1000']
    """
    ax.set_xscale("log")
    lo, hi = (min(ks), max(ks)) if ks is not None and len(ks) else ax.get_xlim()
    series = [m * 10 ** e for e in range(0, 6) for m in (1, 3)]
    ticks = [t for t in series if lo <= t <= hi]
    if len(ticks) < 2 and ks is not None:
        ticks = sorted(set(int(k) for k in ks))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    return ax


# ---------------------------------------------------------------------------- curves over K, ROI summaries
def plot_ev_vs_k(table, methods: Optional[Sequence[str]] = None, roi: str = "all", ax=None, data=None,
                 paper: bool = True, title: Optional[str] = None):
    """Explained variance against the number of support images K, one line per method (seaborn).

    ``table`` is the long table of :func:`~braincorl_lite.evaluation.evaluate_subject`; lines
    show the mean over draws, bands their range, for ``roi`` (``"all"`` or one ROI). ``methods``
    defaults to all; ``fully_trained`` and ``anatomical`` do not depend on K and are drawn as
    horizontal lines. ``paper`` overlays the published NSD subject-1 curves (dotted, labelled as
    the paper's). Returns the Axes.
    """
    import seaborn as sns

    from .evaluation import PAPER_BRAINCORL, PAPER_RIDGE

    ax = _new_ax(ax, (6, 4))
    t = table[table.roi == roi]
    methods = list(dict.fromkeys(t.method)) if methods is None else list(methods)
    for i, m in enumerate(methods):
        rows, style = t[t.method == m], _style(m, i)
        if rows.empty:
            continue
        if m in _FIXED:
            label = f"{style['label']} ({rows.k.iloc[0]} images)" if m == "fully_trained" else style["label"]
            ax.axhline(rows.ev.mean(), color=style["color"], linestyle=style.get("linestyle", "--"), lw=1.3,
                       label=label)
        else:
            sns.lineplot(rows, x="k", y="ev", errorbar=("pi", 100), ax=ax, lw=2, err_kws=dict(alpha=0.15, lw=0),
                         **style)
    ks = list(t[t.method.isin(methods) & ~t.method.isin(_FIXED)].k.unique())
    if paper and roi == "all":
        for curve, m, name in ((PAPER_BRAINCORL, "braincorl", "BraInCoRL"), (PAPER_RIDGE, "ridge", "ridge")):
            if m in methods:
                ax.plot(list(curve), list(curve.values()), color=METHOD_STYLE[m]["color"], lw=1, ls=":",
                        alpha=0.7, marker=".", label=f"paper: {name} (NSD subj. 1, published)")
                ks += list(curve)
    log_k_axis(ax, ks or None)
    ax.set(xlabel="support images K", ylabel="explained variance (shared images)",
           title=title or ("mean over voxels" if roi == "all" else roi))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _finish(ax, data)


def plot_ev_vs_k_by_roi(table, rois: Optional[Sequence[str]] = None, methods: Optional[Sequence[str]] = None,
                        data=None, ncols: int = 5, panel_size: float = 2.4):
    """Learning curves per ROI as small multiples, one :func:`plot_ev_vs_k` panel per ROI.

    ``rois`` defaults to every ROI of the table but ``"all"`` (``"other"`` last). Returns the Figure.
    """
    import matplotlib.pyplot as plt

    if rois is None:
        rois = sorted(set(table.roi) - {"all", "other"}) + (["other"] if "other" in set(table.roi) else [])
    rois = list(rois)
    nrows = int(np.ceil(len(rois) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows + 0.9),
                             sharex=True, sharey=True, layout="constrained", squeeze=False)
    for ax, roi in zip(axes.flat, rois):
        n = table[table.roi == roi].n_voxels
        plot_ev_vs_k(table, methods=methods, roi=roi, ax=ax, paper=False,
                     title=f"{roi} ({int(n.iloc[0])} voxels)" if len(n) else roi)
        ax.get_legend().remove()
        ax.set(xlabel="", ylabel="")
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rois):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.supxlabel("support images K", fontsize=9)
    fig.supylabel("explained variance (shared images)", fontsize=9)
    return _finish(fig, data)


def plot_roi_bars(table, methods: Optional[Sequence[str]] = None, ax=None, data=None,
                  ylabel: str = "mean explained variance (shared images)", title: str = ""):
    """Grouped bars of a per-ROI table (one row per ROI, one column per method), with seaborn.

    ``table`` is e.g. :func:`braincorl_lite.metrics.roi_summary`'s output; ``methods`` (default:
    every column but ``n_voxels``) picks the bars, and ``n_voxels`` goes into the ROI labels.
    Returns the Axes.
    """
    import seaborn as sns

    methods = [c for c in table.columns if c != "n_voxels"] if methods is None else list(methods)
    styles = {m: _style(m, i) for i, m in enumerate(methods)}
    names = [f"{r}\n(n={int(n)})" for r, n in zip(table.index, table["n_voxels"])] \
        if "n_voxels" in table.columns else [str(r) for r in table.index]
    long = table[methods].set_axis(names).rename_axis("roi").reset_index().melt(
        id_vars="roi", var_name="method", value_name="ev")
    long["method"] = long.method.map(lambda m: styles[m]["label"])
    ax = _new_ax(ax, (max(6.0, 0.55 * len(table) * max(len(methods), 2) / 2 + 2), 3.8))
    sns.barplot(long, x="roi", y="ev", hue="method", ax=ax, edgecolor="white", lw=0.3, saturation=1,
                palette={s["label"]: s["color"] for s in styles.values()})
    ax.tick_params(axis="x", labelsize=8)
    ax.set(xlabel="", ylabel=ylabel, title=title)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, ncol=min(len(methods), 3))
    return _finish(ax, data)


# ---------------------------------------------------------------------------- training
def plot_training_log(log, ax=None, window: int = 25, logy: bool = True, title: str = "training loss",
                      label: Optional[str] = None, data=None):
    """Loss per step, coloured by stage, with a centred running mean of width ``window``.

    ``log`` is :func:`braincorl_lite.training.read_log`'s output (``stage, step, loss``); steps are
    counted across stages and stage boundaries are marked. ``label`` prefixes the legend entries
    (to overlay runs). Returns the Axes.
    """
    ax = _new_ax(ax, (7, 3.8))
    x = np.arange(len(log))
    loss = log.loss.reset_index(drop=True)
    stages = log.stage.to_numpy().astype(str)
    for name in dict.fromkeys(stages):
        m = stages == name
        color = STAGE_COLORS.get(name, "0.3")
        smooth = loss[m].rolling(max(1, min(window, int(m.sum()))), center=True, min_periods=1).mean()
        ax.plot(x[m], loss[m], color=color, alpha=0.25, lw=0.7)
        ax.plot(x[m], smooth.to_numpy(), color=color, lw=2, label=f"{label + ': ' if label else ''}{name}")
        if x[m][0] > 0:
            ax.axvline(x[m][0] - 0.5, color="0.5", lw=0.8, ls=":")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="training step (all stages)", ylabel="loss (relative to response variance)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _finish(ax, data)


def plot_training_curve(curve, ridge: Optional[float] = None, oracle: Optional[float] = None, x: str = "step",
                        label: str = "model in training", ax=None, data=None,
                        title: str = "explained variance during training"):
    """Explained variance against training step, beside the ridge and Bayes-oracle levels.

    ``curve`` has columns ``x`` (default ``"step"``) and ``ev``; several rows per step (e.g.
    support draws) give the mean and a band over their range. ``ridge`` and ``oracle`` (EV on
    the same evaluation) are drawn as horizontal lines. Returns the Axes.

    >>> import pandas as pd
    >>> ax = plot_training_curve(pd.DataFrame({"step": [0, 100, 200], "ev": [0.0, 0.05, 0.08]}),
    ...                          ridge=0.067, oracle=0.1)
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['model in training', 'ridge (CV): 0.067', 'Bayes oracle: 0.100']
    """
    import seaborn as sns

    ax = _new_ax(ax, (6, 3.8))
    sns.lineplot(curve, x=x, y="ev", errorbar=("pi", 100), ax=ax, lw=2, marker="o",
                 color=METHOD_STYLE["braincorl"]["color"], label=label)
    for name, level in (("ridge", ridge), ("oracle", oracle)):
        if level is not None:
            style = METHOD_STYLE[name]
            ax.axhline(level, color=style["color"], ls="--", lw=1.3, label=f"{style['label']}: {level:.3f}")
    ax.set(xlabel="training step" if x == "step" else x, ylabel="explained variance (shared images)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _finish(ax, data)


# ---------------------------------------------------------------------------- matrices and point clouds
def _heatmap(M, ax, xlabels, ylabels, cmap, vmin, vmax, cbar_label, annotate):
    import seaborn as sns

    sns.heatmap(M, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, annot=annotate, fmt=".2f", annot_kws={"fontsize": 7},
                xticklabels=xlabels, yticklabels=ylabels, cbar_kws={"label": cbar_label, "shrink": 0.8})
    ax.tick_params(axis="y", rotation=0)
    return ax


def plot_similarity_matrix(sim, labels: Sequence[str], ax=None, title: str = "cosine similarity",
                           vmin: float = -1.0, vmax: float = 1.0, annotate: bool = True, data=None):
    """A labelled heat map (seaborn) of an (n, n) similarity matrix, values written in the cells."""
    sim = np.asarray(sim, float)
    n = len(labels)
    if sim.shape != (n, n):
        raise ValueError(f"sim must be ({n}, {n}) for {n} labels, got {sim.shape}")
    ax = _new_ax(ax, (2.4 + 0.55 * n, 1.2 + 0.55 * n))
    _heatmap(sim, ax, list(labels), list(labels), "RdBu_r", vmin, vmax, "cosine", annotate)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set_title(title)
    return _finish(ax, data)


def plot_prompt_confusion(table, ax=None, title: str = "which prompt wins?", data=None,
                          paper: Optional[Dict[str, str]] = None):
    """Heat map of a prompt-classification table, each row labelled with its accuracy.

    ``table`` is :func:`braincorl_lite.interpretation.prompt_confusion`'s output; ``paper`` maps a
    row to text added to its label (e.g. the paper's NSD accuracy). Returns the Axes.
    """
    cats = [c for c in table.columns if c not in ("accuracy", "n_voxels")]
    paper = paper or {}
    rows = [f"{r} (n={int(n)}, acc {a:.2f}{'; ' + paper[r] if r in paper else ''})"
            for r, n, a in zip(table.index, table["n_voxels"], table["accuracy"])]
    ax = _new_ax(ax, (1.0 * len(cats) + 3.2, 0.45 * len(table) + 1.6))
    _heatmap(table[cats].to_numpy(float), ax, cats, rows, "Blues", 0, 1, "share of voxels", True)
    ax.set(xlabel="winning prompt category", title=title)
    return _finish(ax, data)


def plot_embedding_2d(coords, labels, ax=None, title: str = "", xlabel: Optional[str] = None,
                      ylabel: Optional[str] = None, order: Optional[Sequence[str]] = None, s: float = 8.0,
                      data=None, method: str = "PC"):
    """Scatter (seaborn) of 2-D coordinates, one colour per label, legend with counts.

    ``order`` sets the legend order (default: sorted labels; labels left out are not drawn).
    ``method`` names the map (e.g. the second value of
    :func:`~braincorl_lite.interpretation.embed_2d`): the axes are "<method> 1/2" unless
    ``xlabel``/``ylabel`` are given, and a fallback such as "PCA (umap-learn not installed)" is
    stated in the title. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    coords = np.asarray(coords, float)
    labels = np.asarray(labels).astype(str)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(labels):
        raise ValueError(f"coords must be (n, 2) with one label per row, got {coords.shape} and {len(labels)} labels")
    names = list(order) if order is not None else sorted(set(labels))
    keep = np.isin(labels, names)
    named = {n: f"{n} ({int((labels == n).sum())})" for n in names}
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    ax = _new_ax(ax, (6.5, 4.8))
    sns.scatterplot(x=coords[keep, 0], y=coords[keep, 1], hue=[named[x] for x in labels[keep]],
                    hue_order=list(named.values()), ax=ax, s=s, alpha=0.7, linewidth=0,
                    palette={v: cmap(i % cmap.N) for i, v in enumerate(named.values())})
    short = method.split(" (")[0]
    ax.set(xlabel=xlabel or f"{short} 1", ylabel=ylabel or f"{short} 2",
           title="\n".join(t for t in (title, method if "(" in method else "") if t))
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2)
    return _finish(ax, data)


def plot_weight_scatter(true_W, estimates: Dict[str, np.ndarray], voxels: Sequence[int], data=None,
                        titles: Optional[Sequence[str]] = None, panel_size: float = 3.0):
    """Estimated against true encoder weights (n_voxels, E) for a few ``voxels``, one panel each.

    ``estimates`` maps a method to its weights; the legend gives each method's cosine with the
    truth. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    voxels = list(voxels)
    fig, axes = plt.subplots(1, len(voxels), figsize=(panel_size * len(voxels), panel_size + 0.5),
                             layout="constrained", squeeze=False)
    for ax, v, t in zip(axes[0], voxels, titles or [f"voxel {v}" for v in voxels]):
        x = np.asarray(true_W[v], float)
        for i, (name, W) in enumerate(estimates.items()):
            y = np.asarray(W[v], float)
            cos = float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-12))
            style = _style(name, i)
            ax.scatter(x, y, s=5, alpha=0.45, color=style["color"], label=f"{style['label']} (cos {cos:.2f})")
        lim = np.abs(np.concatenate([x] + [np.asarray(W[v], float) for W in estimates.values()])).max() * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=0.8, ls="--")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="true weight")
        ax.set_title(t, fontsize=10)
        ax.legend(fontsize=7, frameon=False, loc="upper left", markerscale=2)
    axes[0, 0].set_ylabel("estimated weight")
    return _finish(fig, data)


# ---------------------------------------------------------------------------- attention
def plot_attention_examples(attention, captions, categories, titles: Sequence[str], n_top: int = 6,
                            data=None, ncols: int = 2, caption_width: int = 34, responses=None):
    """The ``n_top`` most attended support images of a few voxels: one bar chart per voxel.

    ``attention`` is (n_examples, K); bars (attention x K, 1 = uniform) are labelled with the
    support images' ``captions`` (cut at ``caption_width``) and coloured by their ``categories``.
    With the support ``responses`` (n_examples, K), their z-scores are written next to the bars
    (attention often goes to images that drive a voxel strongly down as well as up). Returns the Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    attention = np.atleast_2d(np.asarray(attention, float))
    captions, categories = np.asarray(captions).astype(str), np.asarray(categories).astype(str)
    if len(titles) != len(attention) or captions.shape != (attention.shape[1],) or categories.shape != captions.shape:
        raise ValueError("need one title per example and one caption and category per support image")
    n, K = attention.shape
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 0.32 * n_top * nrows + 1.0 * nrows + 0.6),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.set_visible(False)
            continue
        top = np.argsort(-attention[i], kind="stable")[:n_top]
        ax.barh(np.arange(n_top), attention[i, top] * K, color=[CATEGORY_COLORS.get(c, "0.6") for c in categories[top]])
        ax.set_yticks(np.arange(n_top), [c if len(c) <= caption_width else c[:caption_width - 1] + "…"
                                         for c in captions[top]], fontsize=8)
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
    return _finish(fig, data)


def plot_precision_vs_chance(table, ax=None, title: str = "top-attended images of the preferred category",
                             data=None):
    """Bars (seaborn) of attention precision per ROI beside chance and, when present, the top responses.

    ``table`` is :func:`braincorl_lite.interpretation.attention_precision_table`'s output.
    Returns the Axes.
    """
    import seaborn as sns

    cols = {"precision": ("top-attended (register 0)", "#d62728"),
            "precision_top_response": ("top measured responses", "#1f77b4"),
            "chance": ("chance (share in support set)", "0.65")}
    cols = {c: v for c, v in cols.items() if c in table.columns}
    long = table[list(cols)].set_axis([f"{r}\n({c})" for r, c in zip(table.index, table["category"])]) \
        .rename(columns={c: v[0] for c, v in cols.items()}).rename_axis("roi").reset_index() \
        .melt(id_vars="roi", var_name="what", value_name="share")
    ax = _new_ax(ax, (max(5.0, 0.75 * len(table) + 2), 3.6))
    sns.barplot(long, x="roi", y="share", hue="what", ax=ax, saturation=1, palette=dict(cols.values()))
    ax.tick_params(axis="x", labelsize=8)
    ax.set(xlabel="", ylabel="share of images of the ROI's category", ylim=(0, 1), title=title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _finish(ax, data)


# ---------------------------------------------------------------------------- the cortex
def voxels_to_surface(data, values, fill_mm: float = 0.0) -> np.ndarray:
    """Scatter one value per voxel onto both fsaverage5 hemispheres (NaN where there is no voxel).

    ``fill_mm > 0`` gives vertices without a voxel the value of the nearest voxel of the same
    hemisphere within that distance, for display only (a surface plot colours only faces whose
    corners all have a value). Returns shape ``(20484,)``, left hemisphere first. Volumetric data
    (real NSD voxels have ``vertex = -1``) raise a clear error.
    """
    values = np.asarray(values, float)
    if values.shape != (data.n_voxels,):
        raise ValueError(f"expected one value per voxel ({data.n_voxels}), got shape {values.shape}")
    if np.any(data.vertex < 0):
        raise ValueError(f"{data.subject} has volumetric voxels (vertex = -1): surface maps need surface "
                         "data such as SimNSD; plot real NSD volumes with voxel_info['ijk'] instead")
    out = np.full(2 * N_VERTICES, np.nan)
    out[data.vertex] = values
    if fill_mm > 0:
        from scipy.spatial import cKDTree

        coords, hemi = fsaverage5_mesh()
        for h in ("L", "R"):
            src = data.vertex[hemi[data.vertex] == h]
            if src.size:
                dst = np.flatnonzero((hemi == h) & np.isnan(out))
                dist, nearest = cKDTree(coords[src]).query(coords[dst], distance_upper_bound=fill_mm)
                ok = np.isfinite(dist)
                out[dst[ok]] = out[src[nearest[ok]]]
    return out


def _template_rois() -> np.ndarray:
    """ROI name of every fsaverage5 vertex in the SimNSD cortex template (published centres, no jitter)."""
    coords, hemi = fsaverage5_mesh()
    centres = {r: [(h, np.array([x, y, z], float)) for h, x, y, z in pts] for r, (_, pts, _) in ROIS.items()}
    return roi_labels(coords, hemi, centres, {r: spec[2] for r, spec in ROIS.items()})


def surface_maps(data, maps: Dict[str, np.ndarray], views: Sequence[str] = ("ventral", "lateral"),
                 cmap: str = "inferno", vmin: Optional[float] = None, vmax: Optional[float] = None,
                 symmetric: bool = False, colorbar_label: str = "", title: Optional[str] = None,
                 panel_size: float = 2.6, fill_mm: float = 4.0, rois: Union[bool, Sequence[str]] = True):
    """Maps of per-voxel values on the inflated fsaverage5 cortex, one row per map, ROIs outlined.

    Parameters
    ----------
    data : SubjectData
        A surface subject (SimNSD); its ``vertex`` field places the voxels.
    maps : dict title -> array (n_voxels,)
        All maps share one colour scale (``symmetric`` centres it on 0; by default it spans the
        2nd-98th percentile).
    views : sequence of {"ventral", "lateral", "medial", "posterior"}
        Columns: left and right hemisphere for each view.
    fill_mm : float
        Display fill-in radius around the subject's voxels (see :func:`voxels_to_surface`).
    rois : bool or sequence of str
        Outline the ROIs of the SimNSD cortex template (nilearn contours, named in a legend):
        all (True), none (False) or the ones named. The outlines are the template's (published
        centres); a subject's own ROIs are shifted by a few mm.

    Returns
    -------
    matplotlib Figure, labelled as simulated when the data are

    Examples
    --------
    >>> from braincorl_lite.datasets import load_dataset
    >>> s = load_dataset("simnsd", size="tiny")[0]
    >>> fig = surface_maps(s, {"noise ceiling": s.noise_ceiling}, views=("ventral",), rois=["FFA", "PPA"])
    >>> [t.get_text() for t in fig.legends[0].get_texts()]
    ['FFA', 'PPA']
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from nilearn import datasets, plotting

    fs = datasets.fetch_surf_fsaverage("fsaverage5")  # bundled with nilearn: no download
    surf = {name: voxels_to_surface(data, v, fill_mm) for name, v in maps.items()}
    allv = np.concatenate([v[np.isfinite(v)] for v in surf.values()])
    lo, hi = np.percentile(allv, [2, 98]) if allv.size else (0.0, 1.0)
    if symmetric:
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    vmin, vmax = lo if vmin is None else vmin, hi if vmax is None else vmax
    names = list(ROIS) if rois is True else list(rois or [])
    if set(names) - set(ROIS):
        raise ValueError(f"unknown ROI(s) {sorted(set(names) - set(ROIS))}; known: {list(ROIS)}")
    template = _template_rois() if names else None
    color = {n: ROI_COLORS.get(n, f"C{i}") for i, n in enumerate(names)}
    n_rows, n_cols = len(surf), 2 * len(views)
    fig, axes = plt.subplots(n_rows, n_cols, subplot_kw={"projection": "3d"}, squeeze=False,
                             figsize=(panel_size * n_cols + 0.8, panel_size * 0.75 * n_rows + 0.6 + 0.3 * bool(names)))
    for r, (name, values) in enumerate(surf.items()):
        for c, (view, hemi) in enumerate((v, h) for v in views for h in ("left", "right")):
            half = slice(None, N_VERTICES) if hemi == "left" else slice(N_VERTICES, None)
            ax = axes[r, c]
            plotting.plot_surf_stat_map(fs[f"infl_{hemi}"], values[half], hemi=hemi, view=view, axes=ax,
                                        bg_map=fs[f"sulc_{hemi}"], colorbar=False, cmap=cmap, vmin=vmin, vmax=vmax,
                                        symmetric_cbar=False)
            present = [n for n in names if n in set(template[half])]
            if present:
                ids = np.array([present.index(x) + 1 if x in present else 0 for x in template[half]])
                plotting.plot_surf_contours(fs[f"infl_{hemi}"], ids, hemi=hemi, axes=ax, figure=fig,
                                            levels=list(range(1, len(present) + 1)),
                                            colors=[color[n] for n in present])
            ax.set_title(f"{hemi[0].upper()}H {view}", fontsize=8, pad=-4)
            ax.set_box_aspect(None, zoom=1.35)
        axes[r, 0].text2D(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center",
                          ha="center", fontsize=10, fontweight="bold")
    bottom = 0.04 + (0.35 / fig.get_figheight() if names else 0)
    fig.subplots_adjust(left=0.04, right=0.88, top=0.9 if title else 0.97, bottom=bottom, wspace=0.0, hspace=0.05)
    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap=cmap), cax=fig.add_axes([0.9, 0.2, 0.015, 0.6]),
                 label=colorbar_label)
    if names:
        fig.legend([Line2D([], [], color=color[n], lw=2.5) for n in names], names, loc="lower left",
                   bbox_to_anchor=(0.03, 0.0), ncol=len(names), fontsize=7, frameon=False, handlelength=1.2,
                   title="ROI outlines (SimNSD template)", title_fontsize=7)
    if title:
        fig.suptitle(title)
    return mark_simulated(fig, data)
