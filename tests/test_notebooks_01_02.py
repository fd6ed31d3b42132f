"""Chapters 1 (feature extraction) and 2 (meta-training), executed with fast parameters."""

import numpy as np
import pytest


@pytest.mark.slow
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


@pytest.mark.slow
def test_02_meta_training(run_notebook):
    rec = run_notebook("02_meta_training.ipynb", fast=True, size="tiny", seed=1)
    from braincorl_lite.cli import shipped_checkpoint
    from braincorl_lite.model import load_checkpoint

    assert rec["params_paper"] == 97_074_852  # the official CLIP model, layer for layer
    assert rec["params_shipped"] == load_checkpoint(shipped_checkpoint())[0].n_parameters()
    # the shipped model reads a 128-d PCA basis, so it is smaller than the default lite config (512-d)
    assert rec["params_shipped"] < rec["params_lite"] < rec["params_paper"]
    # no positional encoding: permuting the support set changes nothing, changing a response does
    assert rec["permutation_max_difference"] < 1e-4
    assert rec["one_response_change"] > 100 * max(rec["permutation_max_difference"], 1e-7)
    # the three stages ran, with finite losses
    assert set(rec["final_loss"]) == {"pretrain", "extend", "finetune"}
    assert all(np.isfinite(v) and 0 < v < 2 for v in rec["final_loss"].values())
    # on new people at K=100: the shipped model beats ridge and does not beat the Bayes oracle
    ev = rec["quick_ev_k100"]
    assert ev["braincorl"] > ev["ridge"]
    assert ev["braincorl"] <= ev["oracle"] + 0.02
    assert ev["small"] > 0  # the untrained model scores exactly 0 (it predicts each voxel's mean)
    # log N scaling keeps register-0 attention more focused than without it, at the largest K
    # the shipped model's supervision gap and the log(N) ablation are shown from the model card's data
    gap = rec["supervision_gap"]
    assert set(gap) >= {"shipped (measured)", "ablation (truth)", "ridge", "Bayes oracle", "truth - measured"}
    assert set(rec["log_n_ablation"]) == {"with log N", "without log N", "difference"}
    spread = rec["attention_spread"]
    k_max = max(spread, key=int)
    assert spread[k_max]["on"] < spread[k_max]["off"]
