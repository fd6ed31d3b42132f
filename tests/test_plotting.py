"""braincorl_lite.plotting: provenance labels, curves, bars, heat maps, attention figures, cortical maps."""

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from braincorl_lite import plotting
from braincorl_lite.metrics import roi_summary
from braincorl_lite.plotting import (log_k_axis, mark_simulated, plot_embedding_2d, plot_ev_vs_k, plot_ev_vs_k_by_roi,
                                     plot_prompt_confusion, plot_roi_bars, plot_similarity_matrix, plot_training_curve,
                                     plot_training_log, plot_weight_scatter, surface_maps, voxels_to_surface)


def _texts(fig):
    return [t.get_text() for t in fig.texts]


def _simulated(fig):
    return "SimNSD (simulated data, not NSD)" in _texts(fig)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------- provenance
def test_mark_simulated_labels_simulations_only(tiny):
    fig = plt.figure()
    mark_simulated(fig, tiny)
    assert _texts(fig) == ["SimNSD (simulated data, not NSD)"]
    real = tiny[0].select_voxels(np.arange(5))
    real.truth, real.meta = None, {"dataset": "nsd"}
    fig2 = plt.figure()
    mark_simulated(fig2, real)
    assert "simulated" not in _texts(fig2)[0]


def test_mark_simulated_reserves_space(tiny):
    fig, ax = plt.subplots(layout="constrained")
    mark_simulated(fig, tiny)
    assert _simulated(fig)
    assert fig.get_layout_engine().get()["rect"][1] == 0.05
    fig2, _ = plt.subplots()  # no layout engine: only the label
    mark_simulated(fig2, tiny)
    assert _simulated(fig2)


# ---------------------------------------------------------------------------- curves over K, ROI summaries
def test_log_k_axis_has_plain_number_ticks():
    ax = plt.figure().add_subplot()
    ax.plot([5, 1000], [0, 1])
    log_k_axis(ax, [5, 10, 50, 100, 500, 1000])
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "30", "100", "300", "1000"]
    assert list(ax.get_xticks()) == [10, 30, 100, 300, 1000]
    log_k_axis(ax, [40, 60])  # fewer than two of the series: the Ks themselves
    assert [t.get_text() for t in ax.get_xticklabels()] == ["40", "60"]


def test_plot_ev_vs_k_draws_means_and_paper_curves(tiny):
    rows = [{"method": m, "k": k, "roi": "all", "ev": ev + 0.01 * d, "n_voxels": 10, "draw": d}
            for m, base in (("braincorl", 0.1), ("ridge", 0.0)) for k, ev in ((10, base), (100, base + 0.05))
            for d in (0, 1)]
    rows.append({"method": "fully_trained", "k": 300, "roi": "all", "ev": 0.2, "n_voxels": 10, "draw": 0})
    ax = plot_ev_vs_k(pd.DataFrame(rows), data=tiny)
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_allclose(lines["BraInCoRL-lite"].get_ydata(), [0.105, 0.155])  # mean over draws
    assert lines["BraInCoRL-lite"].get_color() == plotting.METHOD_STYLE["braincorl"]["color"]
    # the band spans the draws' range
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.1) and band.max() == pytest.approx(0.16)
    # the published curves are the paper's model, never this repository's
    assert "paper: BraInCoRL (NSD subj. 1, published)" in lines and "paper: ridge (NSD subj. 1, published)" in lines
    assert not any(l.startswith("paper:") and "lite" in l for l in lines)
    assert "fully trained (300 images)" in lines
    # plain-number K ticks, over the paper's range too (its curves reach K = 1000)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "30", "100", "300", "1000"]
    assert _simulated(ax.figure)
    ours = plot_ev_vs_k(pd.DataFrame(rows), paper=False)
    assert [t.get_text() for t in ours.get_xticklabels()] == ["10", "30", "100"]


def test_plot_ev_vs_k_by_roi(tiny):
    rows = []
    for roi in ("FFA", "PPA", "other", "all"):
        for m, scale in (("braincorl", 1.0), ("ridge", 0.5)):
            for k in (10, 100):
                rows.append(dict(method=m, k=k, roi=roi, ev=scale * np.log10(k) / 10, n_voxels=7, draw=0))
        rows.append(dict(method="fully_trained", k=300, roi=roi, ev=0.3, n_voxels=7, draw=0))
    fig = plot_ev_vs_k_by_roi(pd.DataFrame(rows), data=tiny, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["FFA (7 voxels)", "PPA (7 voxels)", "other (7 voxels)"]
    assert len(fig.legends) == 1
    assert _simulated(fig)
    assert not any(ax.get_visible() for ax in fig.axes[3:4])


def test_plot_roi_bars(tiny):
    s = tiny[0]
    table = roi_summary({"ridge": s.noise_ceiling, "braincorl": 2 * s.noise_ceiling}, s.roi)
    ax = plot_roi_bars(table, data=s)
    bars = [p for p in ax.patches if p.get_height() != 0 or p.get_width() != 0]
    assert len(bars) == 2 * len(table)
    assert max(p.get_height() for p in bars) == pytest.approx(2 * table["ridge"].max(), rel=1e-5)
    red = [p for p in bars if matplotlib.colors.to_hex(p.get_facecolor()) == plotting.METHOD_STYLE["braincorl"]["color"]]
    assert len(red) == len(table)  # the method's colour in every chapter
    assert any("n=" in t.get_text() for t in ax.get_xticklabels())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ridge (CV)", "BraInCoRL-lite"]
    assert _simulated(ax.figure)
    with pytest.raises(KeyError):
        plot_roi_bars(table, methods=["oracle"])


# ---------------------------------------------------------------------------- training
def test_training_log_marks_stages():
    log = pd.DataFrame({"stage": ["pretrain"] * 5 + ["extend"] * 5 + ["finetune"] * 4,
                        "step": list(range(5)) * 2 + list(range(4)),
                        "loss": np.linspace(1, 0.1, 14)})
    ax = plot_training_log(log, window=3)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["pretrain", "extend", "finetune"]
    vlines = [ln for ln in ax.lines if ln.get_xdata()[0] == ln.get_xdata()[-1] and len(ln.get_xdata()) == 2]
    assert sorted(float(ln.get_xdata()[0]) for ln in vlines) == [4.5, 9.5]
    assert ax.get_yscale() == "log"


def test_training_curve_with_ridge_and_oracle(tiny):
    curve = pd.DataFrame({"step": [0, 0, 100, 100, 200, 200], "ev": [0.0, 0.02, 0.05, 0.07, 0.08, 0.1]})
    ax = plot_training_curve(curve, ridge=0.067, oracle=0.12, data=tiny)
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_allclose(lines["model in training"].get_ydata(), [0.01, 0.06, 0.09])
    assert lines["ridge (CV): 0.067"].get_ydata()[0] == pytest.approx(0.067)
    assert lines["Bayes oracle: 0.120"].get_ydata()[0] == pytest.approx(0.12)
    assert _simulated(ax.figure)
    only = plot_training_curve(curve)
    assert [t.get_text() for t in only.get_legend().get_texts()] == ["model in training"]


# ---------------------------------------------------------------------------- matrices and point clouds
def test_similarity_matrix(tiny):
    sim = np.array([[1.0, 0.3], [0.3, 1.0]])
    ax = plot_similarity_matrix(sim, ["a", "b"], data=tiny)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert "0.30" in [t.get_text() for t in ax.texts]
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(2, 2), sim)
    assert _simulated(ax.figure)
    with pytest.raises(ValueError, match="2, 2"):
        plot_similarity_matrix(np.eye(3), ["a", "b"])


def test_plot_prompt_confusion(tiny):
    table = pd.DataFrame({"faces": [0.8, 0.1], "places": [0.2, 0.9], "accuracy": [0.8, 0.9], "n_voxels": [10, 20]},
                         index=pd.Index(["FFA", "PPA"], name="roi"))
    ax = plot_prompt_confusion(table, data=tiny[0], paper={"PPA": "paper 0.81"})
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(2, 2), [[0.8, 0.2], [0.1, 0.9]])
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert "acc 0.80" in ylabels[0] and "paper 0.81" in ylabels[1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["faces", "places"]
    assert _simulated(ax.figure)


def test_embedding_2d_one_group_per_label(tiny):
    coords = np.random.default_rng(0).standard_normal((30, 2))
    labels = ["x"] * 10 + ["y"] * 20
    ax = plot_embedding_2d(coords, labels, order=["y", "x"], data=tiny)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["y (20)", "x (10)"]
    points = ax.collections[0]
    assert len(points.get_offsets()) == 30 and len({tuple(c) for c in points.get_facecolors()}) == 2
    assert ax.get_xlabel() == "PC 1" and _simulated(ax.figure)
    # the map's method names the axes, and a fallback is stated in the title
    ax2 = plot_embedding_2d(coords, labels, title="weights", method="PCA (umap-learn not installed)")
    assert ax2.get_xlabel() == "PCA 1" and ax2.get_title() == "weights\nPCA (umap-learn not installed)"
    assert plot_embedding_2d(coords, labels, method="UMAP").get_ylabel() == "UMAP 2"
    with pytest.raises(ValueError):
        plot_embedding_2d(coords[:, :1], labels)


def test_plot_weight_scatter(tiny, rng):
    W = tiny[0].truth.weights
    est = {"ridge": W + rng.standard_normal(W.shape), "braincorl": 2 * W}
    fig = plot_weight_scatter(W, est, [0, 1], data=tiny)
    axes = [ax for ax in fig.axes if ax.collections]
    assert len(axes) == 2
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert any("BraInCoRL" in t and "cos 1.00" in t for t in labels)  # scaled weights: cosine 1
    assert _simulated(fig)


# ---------------------------------------------------------------------------- attention
def test_plot_attention_examples(tiny):
    K = 12
    att = np.tile(np.linspace(0.01, 0.12, K), (3, 1))
    caps = [f"caption {i}" for i in range(K)]
    cats = ["faces"] * 6 + ["places"] * 6
    fig = plotting.plot_attention_examples(att, caps, cats, ["a", "b", "c"], n_top=4, data=tiny[0])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels[0] == "caption 11" and len(labels) == 4  # most attended on top
    # bars are attention x K and coloured by category
    assert axes[0].patches[0].get_width() == pytest.approx(0.12 * K)
    assert axes[0].patches[0].get_facecolor()[:3] == pytest.approx(
        matplotlib.colors.to_rgb(plotting.CATEGORY_COLORS["places"]))
    assert _simulated(fig)
    with pytest.raises(ValueError):
        plotting.plot_attention_examples(att, caps[:-1], cats, ["a", "b", "c"])


def test_plot_precision_vs_chance(tiny):
    table = pd.DataFrame({"category": ["faces", "places"], "precision": [0.4, 0.3], "chance": [0.1, 0.2],
                          "precision_top_response": [0.5, 0.6]}, index=pd.Index(["FFA", "PPA"], name="roi"))
    ax = plotting.plot_precision_vs_chance(table, data=tiny[0])
    heights = sorted(round(p.get_height(), 3) for p in ax.patches if p.get_height() > 0)
    assert heights == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert len(ax.get_legend().get_texts()) == 3
    assert _simulated(ax.figure)
    ax2 = plotting.plot_precision_vs_chance(table.drop(columns="precision_top_response"))
    assert len([p for p in ax2.patches if p.get_height() > 0]) == 4 and not _texts(ax2.figure)


# ---------------------------------------------------------------------------- the cortex
def test_voxels_to_surface_places_and_fills(tiny):
    s = tiny[0]
    values = np.arange(s.n_voxels, dtype=float)
    surf = voxels_to_surface(s, values)
    assert surf.shape == (20484,)
    np.testing.assert_array_equal(surf[s.vertex], values)
    assert np.isfinite(surf).sum() == s.n_voxels
    filled = voxels_to_surface(s, values, fill_mm=6.0)
    np.testing.assert_array_equal(filled[s.vertex], values)  # voxels keep their own values
    assert np.isfinite(filled).sum() > s.n_voxels
    assert set(np.unique(filled[np.isfinite(filled)])) <= set(values)  # fill copies, never invents
    with pytest.raises(ValueError, match="one value per voxel"):
        voxels_to_surface(s, values[:-1])


def test_voxels_to_surface_refuses_volumetric_data(tiny):
    vol = tiny[0].select_voxels(np.arange(5))
    vol.vertex = np.full(5, -1)
    with pytest.raises(ValueError, match="volumetric"):
        voxels_to_surface(vol, np.zeros(5))


def test_surface_maps_layout_and_roi_outlines(tiny):
    s = tiny[0]
    fig = surface_maps(s, {"a": s.noise_ceiling, "b": -s.noise_ceiling}, views=("ventral",), symmetric=True)
    assert len([ax for ax in fig.axes if ax.name == "3d"]) == 4  # 2 maps x 2 hemispheres
    lo, hi = fig.axes[-1].get_ylim()  # the colour bar
    assert lo == pytest.approx(-hi)
    assert _simulated(fig)
    # every ROI of the template is outlined and named in the legend
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == list(plotting.ROI_COLORS)
    assert "VWFA" in legend  # a left-hemisphere-only ROI
    plain = surface_maps(s, {"a": s.noise_ceiling}, views=("ventral",), rois=False)
    assert not plain.legends
    with pytest.raises(ValueError, match="unknown ROI"):
        surface_maps(s, {"a": s.noise_ceiling}, views=("ventral",), rois=["FFA", "V1"])


def test_roi_outlines_follow_the_template():
    from braincorl_lite.cortex import ROIS, fsaverage5_mesh

    labels = plotting._template_rois()
    coords, hemi = fsaverage5_mesh()
    assert labels.shape == (20484,) and set(labels) == set(ROIS) | {"other"}
    # the vertex nearest a ROI centre belongs to that ROI (FFA's right-hemisphere peak)
    centre = np.array(ROIS["FFA"][1][0][1:], float)
    right = np.flatnonzero(hemi == "R")
    assert labels[right[np.argmin(np.linalg.norm(coords[right] - centre, axis=1))]] == "FFA"
    assert not np.any(labels[hemi == "R"] == "VWFA")  # VWFA is left-lateralised
