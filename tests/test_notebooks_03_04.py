"""Chapters 3 and 4 executed with fast parameters (papermill): the values they report make sense."""

import pytest

pytestmark = pytest.mark.slow


def _col(table, method):
    """One method's column of a recorded table, keys turned back into ints."""
    return {int(k): v for k, v in table[method].items() if v is not None}


def test_few_shot_inference(run_notebook):
    rec = run_notebook("03_few_shot_inference.ipynb", fast=True, size="tiny", seed=1)
    ev = rec["ev_mean"]
    assert rec["K"] == 100 and rec["n_voxels"] > 50
    assert rec["predict_seconds"] > 0
    # the model beats ridge on the same 100 images and does not beat the Bayes oracle by much
    assert ev["braincorl"] > ev["ridge"] + 0.02
    assert ev["oracle"] >= ev["braincorl"] - 0.01
    # the true encoder is the ceiling of every estimate; the anatomical average is below the model
    assert ev["true encoder"] > max(ev["braincorl"], ev["oracle"], ev["ridge"], ev["fully_trained"])
    assert ev["anatomical"] < ev["braincorl"]
    # the predicted weights point closer to the true weights than ridge's
    cos = rec["weight_cosine_median"]
    assert cos["braincorl"] > cos["ridge"] + 0.1
    assert cos["oracle"] >= cos["braincorl"] - 0.05
    # per ROI: the model beats ridge in most regions
    roi = rec["roi_table"]
    names = [r for r in roi["braincorl"] if r != "all"]
    wins = sum(roi["braincorl"][r] > roi["ridge"][r] for r in names)
    assert wins >= 0.7 * len(names)


def test_test_time_scaling(run_notebook):
    rec = run_notebook("04_test_time_scaling.ipynb", fast=True, size="tiny", seed=1)
    ks = rec["ks"]
    assert ks == [10, 30, 100, 300]
    t = rec["ev_table"]
    bc, ridge, oracle = _col(t, "braincorl"), _col(t, "ridge"), _col(t, "oracle")
    for k in (30, 100):
        assert bc[k] > ridge[k] + 0.02
    for k in ks:
        assert oracle[k] >= bc[k] - 0.015
    # more support images, better encoders (allowing for sampling noise)
    for curve in (bc, ridge, oracle):
        assert all(curve[b] > curve[a] - 0.005 for a, b in zip(ks, ks[1:]))
        assert curve[ks[-1]] > curve[ks[0]] + 0.05
    # the anatomical average does not depend on K and is below the model at K >= 30
    anat = set(round(v, 9) for v in _col(t, "anatomical").values())
    assert len(anat) == 1 and anat.pop() < bc[30]
    # ridge needs more images than the model: the factor at K = 100 is > 1 (None = never within range)
    assert rec["ratio_k100"] is None or rec["ratio_k100"] > 1.5
    # SimB5K without retraining: the model beats ridge at every K
    b = rec["simb5k_table"]
    bc5, ridge5 = _col(b, "braincorl"), _col(b, "ridge")
    assert set(bc5) == set(ks)
    assert all(bc5[k] > ridge5[k] for k in bc5)
