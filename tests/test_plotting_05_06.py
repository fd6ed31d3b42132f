"""Tests of the plotting helpers of the attention and language chapters."""

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from braincorl_lite import plotting


def _texts(fig):
    return [t.get_text() for t in fig.texts]


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
    assert axes[0].patches[0].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(plotting.CATEGORY_COLORS["places"]))
    assert any("simulated" in t for t in _texts(fig))
    with pytest.raises(ValueError):
        plotting.plot_attention_examples(att, caps[:-1], cats, ["a", "b", "c"])
    plt.close("all")


def test_plot_precision_vs_chance(tiny):
    table = pd.DataFrame({"category": ["faces", "places"], "precision": [0.4, 0.3], "chance": [0.1, 0.2],
                          "precision_top_response": [0.5, 0.6]}, index=pd.Index(["FFA", "PPA"], name="roi"))
    ax = plotting.plot_precision_vs_chance(table, data=tiny[0])
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert len(ax.get_legend().get_texts()) == 3
    assert any("simulated" in t for t in _texts(ax.figure))
    ax2 = plotting.plot_precision_vs_chance(table.drop(columns="precision_top_response"))
    assert len(ax2.patches) == 4 and not _texts(ax2.figure)
    plt.close("all")


def test_plot_prompt_confusion(tiny):
    table = pd.DataFrame({"faces": [0.8, 0.1], "places": [0.2, 0.9], "accuracy": [0.8, 0.9], "n_voxels": [10, 20]},
                         index=pd.Index(["FFA", "PPA"], name="roi"))
    ax = plotting.plot_prompt_confusion(table, data=tiny[0], paper={"PPA": "paper 0.81"})
    img = ax.get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(img), [[0.8, 0.2], [0.1, 0.9]])
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert "acc 0.80" in ylabels[0] and "paper 0.81" in ylabels[1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["faces", "places"]
    assert any("simulated" in t for t in _texts(ax.figure))
    plt.close("all")
