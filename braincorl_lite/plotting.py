"""Figures shared by the book's chapters: learning curves, cortical maps, simulation labels.

Every figure made from simulated data carries a visible label saying so (:func:`mark_simulated`);
the plotting functions here add it themselves when they are given the data.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .datasets import dataset_label

__all__ = ["METHOD_STYLE", "mark_simulated", "plot_ev_vs_k", "surface_maps", "voxels_to_surface"]

#: colour, label and line style of each method, the same in every chapter
METHOD_STYLE = {
    "braincorl": dict(color="#d62728", label="BraInCoRL-lite", marker="o"),
    "ridge": dict(color="#1f77b4", label="ridge (CV)", marker="s"),
    "oracle": dict(color="#2ca02c", label="Bayes oracle", marker="^"),
    "fully_trained": dict(color="0.2", label="fully trained", linestyle=":"),
    "anatomical": dict(color="#9467bd", label="anatomical average", linestyle="--"),
}

_N_VERTICES = 10242  # per fsaverage5 hemisphere


def mark_simulated(fig, data, where: str = "bottom"):
    """Write the data's provenance on ``fig`` (e.g. "SimNSD (simulated data, not NSD)").

    Simulated data are labelled in red so that no figure of a simulation can pass for real data;
    real data get a grey source line. Returns ``fig``.
    """
    label = dataset_label(data)
    simulated = "simulated" in label
    y = 0.005 if where == "bottom" else 0.995
    fig.text(0.995, y, label, ha="right", va="bottom" if where == "bottom" else "top",
             fontsize=8, color="#b22222" if simulated else "0.4", style="italic")
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
        for curve, m in ((PAPER_BRAINCORL, "braincorl"), (PAPER_RIDGE, "ridge")):
            if m in methods:
                k = sorted(curve)
                ax.plot(k, [curve[x] for x in k], color=METHOD_STYLE[m]["color"], lw=1, ls="--", alpha=0.7,
                        marker=".", label=f"paper: {METHOD_STYLE[m]['label'].split(' ')[0]} (NSD subj. 1)")
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
