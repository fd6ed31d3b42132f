"""Shared figures: simulation labels, EV-vs-K curves, cortical maps."""

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from braincorl_lite.plotting import mark_simulated, plot_ev_vs_k, surface_maps, voxels_to_surface


def _texts(fig):
    return [t.get_text() for t in fig.texts]


def test_mark_simulated_labels_simulations_only(tiny):
    fig = plt.figure()
    mark_simulated(fig, tiny)
    assert _texts(fig) == ["SimNSD (simulated data, not NSD)"]
    real = tiny[0].select_voxels(np.arange(5))
    real.truth, real.meta = None, {"dataset": "nsd"}
    fig2 = plt.figure()
    mark_simulated(fig2, real)
    assert "simulated" not in _texts(fig2)[0]
    plt.close("all")


def test_plot_ev_vs_k_draws_means_and_paper_curves(tiny):
    rows = [{"method": m, "k": k, "roi": "all", "ev": ev + 0.01 * d, "n_voxels": 10, "draw": d}
            for m, base in (("braincorl", 0.1), ("ridge", 0.0)) for k, ev in ((10, base), (100, base + 0.05))
            for d in (0, 1)]
    rows.append({"method": "fully_trained", "k": 300, "roi": "all", "ev": 0.2, "n_voxels": 10, "draw": 0})
    ax = plot_ev_vs_k(pd.DataFrame(rows), data=tiny)
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_allclose(lines["BraInCoRL-lite"].get_ydata(), [0.105, 0.155])
    # the published curves are the paper's model, never this repository's
    assert "paper: BraInCoRL (NSD subj. 1, published)" in lines and "paper: ridge (NSD subj. 1, published)" in lines
    assert not any(l.startswith("paper:") and "lite" in l for l in lines)
    assert "fully trained (300 images)" in lines
    assert "SimNSD (simulated data, not NSD)" in _texts(ax.figure)
    plt.close("all")


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


def test_surface_maps_layout(tiny):
    s = tiny[0]
    fig = surface_maps(s, {"a": s.noise_ceiling, "b": -s.noise_ceiling}, views=("ventral",), symmetric=True)
    assert len([ax for ax in fig.axes if ax.name == "3d"]) == 4  # 2 maps x 2 hemispheres
    cbar = fig.axes[-1]
    lo, hi = cbar.get_ylim()
    assert lo == pytest.approx(-hi)
    assert "SimNSD (simulated data, not NSD)" in _texts(fig)
    plt.close("all")
