"""Plot helpers of chapters 1-2: similarity matrices, 2-D embeddings, training logs."""

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from braincorl_lite.plotting import plot_embedding_2d, plot_similarity_matrix, plot_training_log


def _texts(fig):
    return [t.get_text() for t in fig.texts]


def test_similarity_matrix(tiny):
    sim = np.array([[1.0, 0.3], [0.3, 1.0]])
    ax = plot_similarity_matrix(sim, ["a", "b"], data=tiny)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert "0.30" in [t.get_text() for t in ax.texts]
    assert any("simulated" in t for t in _texts(ax.figure))
    with pytest.raises(ValueError, match="2, 2"):
        plot_similarity_matrix(np.eye(3), ["a", "b"])
    plt.close("all")


def test_embedding_2d_one_group_per_label(tiny):
    coords = np.random.default_rng(0).standard_normal((30, 2))
    labels = ["x"] * 10 + ["y"] * 20
    ax = plot_embedding_2d(coords, labels, order=["y", "x"], data=tiny)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["y (20)", "x (10)"]
    assert len(ax.collections) == 2 and any("simulated" in t for t in _texts(ax.figure))
    with pytest.raises(ValueError):
        plot_embedding_2d(coords[:, :1], labels)
    plt.close("all")


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
    plt.close("all")


def test_mark_simulated_reserves_space(tiny):
    from braincorl_lite.plotting import mark_simulated

    fig, ax = plt.subplots(layout="constrained")
    mark_simulated(fig, tiny)
    assert any("simulated" in t for t in _texts(fig))
    assert fig.get_layout_engine().get()["rect"][1] == 0.05
    fig2, _ = plt.subplots()  # no layout engine: only the label
    mark_simulated(fig2, tiny)
    assert any("simulated" in t for t in _texts(fig2))
    plt.close("all")
