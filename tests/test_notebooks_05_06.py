"""Execute the attention (05) and language (06) chapters with fast parameters and check their numbers."""

import pytest

pytestmark = pytest.mark.slow


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
