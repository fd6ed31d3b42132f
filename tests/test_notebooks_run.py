"""Every chapter executed with fast parameters (papermill): the values it records make sense.

The student editions are executed too: without their solutions they must still run.
"""

from pathlib import Path

import numpy as np
import pytest

from braincorl_lite.notebook import execute_notebook, read_records, write_students

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
pytestmark = pytest.mark.slow


def test_00_ridge_to_bayes(run_notebook):
    rec = run_notebook("00_ridge_to_bayes.ipynb", fast=True, size="tiny", seed=1)
    # SimNSD's response model: residuals around the true encoder have the stated noise variance
    assert 0.8 < rec["noise_model_ratio_median"] < 1.2
    # ridge = closed form at a fixed penalty = the posterior mean under an isotropic Gaussian prior
    assert rec["ridge_closed_form_vs_fit_ridge"] < 1e-6
    assert rec["ridge_vs_isotropic_posterior"] < 1e-3 * rec["ridge_weight_scale"]
    # the oracle's formulas agree with a brute-force Monte Carlo posterior mean, better with more draws
    mc = rec["oracle_vs_monte_carlo"]
    assert mc["relative_difference"] < 0.15 and mc["relative_difference"] < mc["first_relative_difference"]
    # the oracle beats ridge at every K, the true encoder beats both; the gap shrinks with K
    ev = rec["ev_by_k"]
    assert all(o > r for o, r in zip(ev["oracle"], ev["ridge"]))
    assert ev["truth"] > max(ev["oracle"])
    assert ev["oracle"][0] - ev["ridge"][0] > ev["oracle"][-1] - ev["ridge"][-1]
    # the posterior mean minimises the query loss along the prior-to-oracle line
    assert abs(rec["query_loss_best_gamma"] - 1) <= 0.2
    assert rec["query_mse"]["oracle"] < min(rec["query_mse"]["prior_mean"], rec["query_mse"]["ridge"])
    # the three exercises' solutions ran; the by-hand mixture posterior is exact
    assert rec["exercise_0_3"] == pytest.approx(0.541, abs=1e-3)
    assert {"exercise_0_1", "exercise_0_2"} <= set(rec)


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb")))
def test_student_edition_runs_without_solutions(name, tmp_path):
    [student] = write_students([NOTEBOOKS / name], tmp_path / "students")
    execute_notebook(student, parameters={"fast": True, "size": "tiny", "seed": 1}, cwd=tmp_path)
    assert not any(k.startswith("exercise_") for k in read_records(student))


def test_01_feature_extraction(run_notebook):
    rec = run_notebook("01_feature_extraction.ipynb", fast=True, size="tiny", seed=1)
    # CLIP mechanics: 224x224 inputs, 512-d unit-norm rows, batching and caching are exact
    assert rec["clip_input_shape"] == [3, 224, 224]
    assert rec["clip_embedding_shape"][1] == 512
    assert rec["clip_norm_max_deviation"] < 1e-5
    assert rec["clip_batching_max_difference"] < 1e-4
    assert rec["cache_roundtrip_max_difference"] < 1e-6
    assert rec["folder_extraction_max_difference"] < 1e-4
    assert isinstance(rec["clip_pretrained"], bool)
    # SimNSD geometry is CLIP-like: unit norm, positive mean cosine, category structure
    assert rec["simnsd_embedding_shape"][1] == 512
    assert rec["simnsd_norm_max_deviation"] < 1e-3
    assert 0.25 < rec["simnsd_mean_cosine"] < 0.5
    assert rec["simnsd_cosine_within_category"] > rec["simnsd_cosine_between_category"] + 0.05
    assert 0 < rec["simnsd_pca_explained_2"] < 0.5
    # the text encoder retrieves images of the named category, across a modality gap
    assert rec["text_retrieval_top10_precision"] > 0.5
    assert rec["text_image_mean_cosine"] < rec["simnsd_mean_cosine"]
    # the exercises' solutions: |mean embedding|^2 gives the mean pairwise cosine (the histogram's is a
    # sample of it), text retrieval finds the named category, batching and caching change nothing
    assert rec["exercise_1_1"] == pytest.approx(rec["simnsd_mean_cosine"], abs=0.03)
    # top-100 precision: chance is about 0.1 (ten categories); with size="tiny" a category has only
    # about 30 unique images, so at most about 0.3 of a top 100 can match
    assert rec["exercise_1_2"] > 0.2
    assert rec["exercise_1_3"] is True


def test_02_meta_training(run_notebook):
    rec = run_notebook("02_meta_training.ipynb", fast=True, size="tiny", seed=1)
    from braincorl_lite.checkpoint import load_pretrained

    assert rec["params_paper"] == 97_074_852  # the official CLIP model, layer for layer
    assert rec["params_shipped"] == load_pretrained().n_parameters()
    # the shipped model reads a 128-d PCA basis, so it is smaller than the default lite config (512-d)
    assert rec["params_shipped"] < rec["params_lite"] < rec["params_paper"]
    # no positional encoding: permuting the support set changes nothing, changing a response does
    assert rec["permutation_max_difference"] < 1e-4
    assert rec["one_response_change"] > 100 * max(rec["permutation_max_difference"], 1e-7)
    # the from-scratch model with the package's weights gives the package's encoders
    assert rec["scratch_matches_package"] is True and rec["scratch_max_difference"] < 1e-4
    # the hand-written training loop lowers the query loss of the untrained model (about 1 + 1/K)
    first, last = rec["hand_loss_first_last"]
    assert 0.9 < first < 1.3 and last < first
    # the three stages ran (all steps: the fast run is far inside train_minutes), with finite losses
    assert rec["steps_done"] == sum(rec["train_steps"])
    assert set(rec["final_loss"]) == {"pretrain", "extend", "finetune"}
    assert all(np.isfinite(v) and 0 < v < 2 for v in rec["final_loss"].values())
    # EV during training: 0 before training, evaluated by the callback, the last point is the final model
    curve = {int(k): v for k, v in rec["training_curve"].items()}
    assert curve[0] == 0.0 and max(curve) == rec["steps_done"] and len(curve) >= 3
    # on new people at K=100: the shipped model beats ridge and does not beat the Bayes oracle
    ev = rec["quick_ev_k100"]
    assert set(ev) == {"small", "braincorl", "ridge", "oracle"}
    assert curve[rec["steps_done"]] == ev["small"]
    assert ev["braincorl"] > ev["ridge"]
    assert ev["braincorl"] <= ev["oracle"] + 0.02
    assert -0.05 < ev["small"] < ev["oracle"]  # the fast run is short: it may stay below ridge
    # the exercises' solutions ran: register-0 attention by hand, the log N switch, unit equivariance
    assert 0 < rec["exercise_2_1"] < 1
    assert abs(rec["exercise_2_2"]) < 0.1
    assert rec["exercise_2_3"] is True
    # log N scaling keeps register-0 attention more focused than without it, at the largest K
    # the shipped model's supervision gap and the log(N) ablation are shown from the model card's data
    gap = rec["supervision_gap"]
    assert set(gap) >= {"shipped (measured)", "ablation (truth)", "ridge", "Bayes oracle", "truth - measured"}
    assert set(rec["log_n_ablation"]) == {"with log N", "without log N", "difference"}
    spread = rec["attention_spread"]
    k_max = max(spread, key=int)
    assert spread[k_max]["on"] < spread[k_max]["off"]


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
    # the exercises' solutions: the model's lead over ridge also holds at K = 30, its weights are
    # shrunk (slope between 0 and 1), stable across support sets, and independent of their order
    assert rec["exercise_3_1"] > 0.02
    assert 0 < rec["exercise_3_2"] < 1
    assert rec["exercise_3_3"] > cos["ridge"]
    assert rec["exercise_3_4"] is True


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
    # the exercises' solutions: ridge needs more images at K = 30, EV rises with log K, and the
    # model captures part (not more than all) of the oracle's head start over ridge at K = 100
    assert rec["exercise_4_1"] > 1.5
    assert rec["exercise_4_2"] > 0.01
    assert 0.2 < rec["exercise_4_3"] <= 1.1
    # SimB5K without retraining: the model beats ridge at every K
    b = rec["simb5k_table"]
    bc5, ridge5 = _col(b, "braincorl"), _col(b, "ridge")
    assert set(bc5) == set(ks)
    assert all(bc5[k] > ridge5[k] for k in bc5)


def test_attention_chapter(run_notebook):
    rec = run_notebook("05_attention_interpretability.ipynb", fast=True, size="tiny", seed=1)
    by_cat = rec["attention_precision_by_category"]
    # the face regions' top-attended images are faces more often than chance
    assert by_cat["precision"]["faces"] > by_cat["chance"]["faces"]
    # pooled over all regions the attention is category-specific
    prec = rec["attention_precision"]
    hits = sum(prec["precision"][r] * prec["n_voxels"][r] for r in prec["precision"])
    base = sum(prec["chance"][r] * prec["n_voxels"][r] for r in prec["chance"])
    assert hits > 1.2 * base
    # attention follows the size of the response more than its sign
    corr = rec["attention_correlation"]
    assert corr["|response|"] > 0.3 and corr["|response|"] > corr["response"]
    # the predicted weights separate the categories better than chance
    sep = rec["separation"]["BraInCoRL-lite/category"]
    assert sep["nearest-centroid accuracy"] > sep["chance"] + 0.1
    assert rec["separation"]["true weights/category"]["nearest-centroid accuracy"] > sep["chance"]
    # a random or diverse support set beats a single-category one of the same size
    ev = rec["support_set_ev"]
    single = [v for k, v in ev.items() if k.startswith("only") and k.endswith("BraInCoRL-lite")]
    assert single
    assert max(ev["diverse/BraInCoRL-lite"], ev["random/BraInCoRL-lite"]) > max(single)
    assert ev["random/BraInCoRL-lite"] > ev["random/ridge"]
    # the example figure's count of preferred-category images among the top six (the text quotes it)
    assert all(0 <= n <= 6 for n in rec["example_hits"].values())
    # the exercises: register-0 attention by hand (its solution asserts np.allclose with the model's)
    # puts more than uniform weight on the top image; a leave-one-out nearest centroid agrees with
    # the cross-validated one of the separation table
    assert rec["exercise_5_1"] > 1
    assert rec["exercise_5_2"] >= 0
    assert rec["exercise_5_3"] == pytest.approx(sep["nearest-centroid accuracy"], abs=0.1)


def test_language_chapter(run_notebook):
    rec = run_notebook("06_language_to_voxel.ipynb", fast=True, size="tiny", seed=1)
    acc = rec["prompt_accuracy"]
    chance = acc["chance"]["places"]
    assert chance == pytest.approx(0.2)
    # the place regions are labelled by the place prompt well above chance
    assert acc["BraInCoRL-lite"]["places"] > 2 * chance
    assert acc["BraInCoRL-lite"]["bodies"] > chance
    assert acc["true weights (ceiling)"]["places"] > 2 * chance
    # removing the modality gap hardly changes which prompt wins
    assert rec["gap_argmax_agreement"] > 0.9
    gap = rec["modality_gap"]
    assert gap["cos_image_text"] < gap["cos_image_image"]
    # rewording the body prompt (no face word) helps the face regions
    assert rec["prompt_accuracy_reworded"]["BraInCoRL-lite"]["faces"] >= acc["BraInCoRL-lite"]["faces"]
    # the place prompt is most selective in a place region (the maps' claim, in numbers)
    assert rec["prompt_top_rois"]["places"][0] in {"PPA", "OPA", "RSC"}
    # the exercises: PPA voxels prefer the place prompt; labelling by prompts beats chance;
    # closing the modality gap by hand keeps the winners
    assert rec["exercise_6_1"] > 0
    assert rec["exercise_6_2"] > chance
    assert rec["exercise_6_3"] > 0.9
    assert 0 <= rec["exercise_6_4"] <= 1
