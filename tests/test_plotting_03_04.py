"""Plot helpers of the few-shot and test-time scaling chapters."""

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from braincorl_lite.metrics import roi_summary
from braincorl_lite.plotting import plot_ev_vs_k_by_roi, plot_roi_bars, plot_weight_scatter


def _texts(fig):
    return [t.get_text() for t in fig.texts]


def test_plot_weight_scatter(tiny, rng):
    s = tiny[0]
    W = s.truth.weights
    est = {"ridge": W + rng.standard_normal(W.shape), "braincorl": 2 * W}
    fig = plot_weight_scatter(W, est, [0, 1], data=tiny)
    axes = [ax for ax in fig.axes if ax.collections]
    assert len(axes) == 2
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert any("BraInCoRL" in t and "cos 1.00" in t for t in labels)  # scaled weights: cosine 1
    assert any("simulated" in t for t in _texts(fig))
    plt.close(fig)


def test_plot_roi_bars(tiny):
    s = tiny[0]
    table = roi_summary({"ridge": s.noise_ceiling, "braincorl": 2 * s.noise_ceiling}, s.roi)
    ax = plot_roi_bars(table, data=s)
    bars = [p for p in ax.patches]
    assert len(bars) == 2 * len(table)
    heights = sorted(round(p.get_height(), 6) for p in bars)
    assert max(heights) == pytest.approx(2 * table["ridge"].max(), rel=1e-5)
    assert any("n=" in t.get_text() for t in ax.get_xticklabels())
    assert any("simulated" in t for t in _texts(ax.figure))
    with pytest.raises(KeyError):
        plot_roi_bars(table, methods=["oracle"])
    plt.close("all")


def test_plot_ev_vs_k_by_roi(tiny):
    rows = []
    for roi in ("FFA", "PPA", "other", "all"):
        for m, scale in (("braincorl", 1.0), ("ridge", 0.5)):
            for k in (10, 100):
                rows.append(dict(method=m, k=k, roi=roi, ev=scale * np.log10(k) / 10, n_voxels=7, draw=0))
        rows.append(dict(method="fully_trained", k=300, roi=roi, ev=0.3, n_voxels=7, draw=0))
    table = pd.DataFrame(rows)
    fig = plot_ev_vs_k_by_roi(table, data=tiny, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["FFA (7 voxels)", "PPA (7 voxels)", "other (7 voxels)"]
    assert len(fig.legends) == 1
    assert any("simulated" in t for t in _texts(fig))
    assert not any(ax.get_visible() for ax in fig.axes[3:4])
    plt.close(fig)
