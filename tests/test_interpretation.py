"""Tests of braincorl_lite.interpretation: attention, precision, separation, support sets, prompts."""

import numpy as np
import pytest
import torch

from braincorl_lite import interpretation as interp
from braincorl_lite.model import BraInCoRL, ModelConfig


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=2, n_heads=4)).eval()


def test_register_attention_matches_forward(small_model, rng):
    x = rng.standard_normal((12, 16)).astype(np.float32)
    y = rng.standard_normal((7, 12)).astype(np.float32)
    a = interp.register_attention(small_model, x, y, chunk_size=3)
    assert a.shape == (7, 12)
    with torch.no_grad():
        _, att = small_model(torch.tensor(x), torch.tensor(y), return_attention=True)
    R = small_model.config.n_registers
    np.testing.assert_allclose(a, att[-1][:, :, 0, R:].mean(1).numpy(), atol=1e-6)
    # probabilities: non-negative, and the registers take the rest of the mass
    assert np.all(a >= 0) and np.all(a.sum(1) <= 1 + 1e-5)
    all_heads = interp.register_attention(small_model, x, y, layer=0, heads="all")
    assert all_heads.shape == (7, small_model.config.n_heads, 12)


def test_register_attention_follows_support_order(small_model, rng):
    x = rng.standard_normal((10, 16)).astype(np.float32)
    y = rng.standard_normal((4, 10)).astype(np.float32)
    perm = rng.permutation(10)
    a = interp.register_attention(small_model, x, y)
    b = interp.register_attention(small_model, x[perm], y[:, perm])
    np.testing.assert_allclose(b, a[:, perm], atol=1e-5)


def test_register_attention_rejects_bad_input(small_model):
    with pytest.raises(ValueError):
        interp.register_attention(small_model, np.zeros((5, 16)), np.zeros((2, 6)))
    with pytest.raises(ValueError):
        interp.register_attention(small_model, np.zeros((5, 16)), np.zeros((2, 5)), register=9)


def test_topk_precision_and_table():
    att = np.array([[0.5, 0.3, 0.1, 0.1], [0.0, 0.1, 0.2, 0.7]])
    cats = np.array(["faces", "faces", "places", "food"])
    assert interp.top_attended(att, 2).tolist() == [[0, 1], [3, 2]]
    np.testing.assert_allclose(interp.topk_precision(att, cats, "faces", 2), [1.0, 0.0])
    np.testing.assert_allclose(interp.topk_precision(att, cats, np.array(["faces", "food"]), 1), [1.0, 1.0])
    table = interp.attention_precision_table(att, cats, np.array(["FFA", "PPA"]), n=2, responses=att)
    assert table.loc["FFA", "precision"] == 1.0 and table.loc["FFA", "chance"] == 0.5
    assert table.loc["PPA", "precision"] == 0.5 and table.loc["PPA", "chance"] == 0.25
    assert "precision_top_response" in table.columns and "OPA" not in table.index
    with pytest.raises(ValueError):
        interp.top_attended(att, 5)


def test_separation_scores_tell_clusters_from_noise(rng):
    W = np.vstack([rng.normal(0, 1, (40, 6)) + [4, 0, 0, 0, 0, 0], rng.normal(0, 1, (40, 6)) - [4, 0, 0, 0, 0, 0]])
    labels = np.repeat(["a", "b"], 40)
    good = interp.separation_scores(W, labels)
    assert good["nearest_centroid"] > 0.95 and good["silhouette"] > 0.3
    shuffled = interp.separation_scores(W, rng.permutation(labels))
    assert shuffled["nearest_centroid"] < 0.75 and abs(shuffled["silhouette"]) < 0.1
    assert good["chance"] == 0.5 and good["classes"] == ["a", "b"]
    # a class with too few voxels is dropped
    s = interp.separation_scores(W, np.r_[labels[:-2], ["c", "c"]])
    assert s["classes"] == ["a", "b"] and s["n_voxels"] == 78


def test_pca_project_orders_variance(rng):
    W = rng.standard_normal((100, 5)) * [5, 2, 1, 1, 1]
    scores, explained = interp.pca_project(W, 3, normalise=False)
    assert scores.shape == (100, 3)
    assert explained[0] > explained[1] > explained[2] and explained.sum() < 1
    np.testing.assert_allclose(scores.mean(0), 0, atol=1e-10)


def test_build_support_set_kinds(rng):
    cats = np.array(["faces"] * 60 + ["food"] * 8 + ["places"] * 40)
    pool = np.arange(len(cats))
    r = interp.build_support_set("random", cats, pool, 30, rng=0)
    assert len(np.unique(r)) == 30 and np.all(np.diff(r) > 0)
    c = interp.build_support_set("category", cats, pool, 30, rng=0, category="places")
    assert np.all(cats[c] == "places")
    d = interp.build_support_set("diverse", cats, pool, 30, rng=0)
    counts = {k: int((cats[d] == k).sum()) for k in ("faces", "food", "places")}
    assert counts == {"faces": 11, "food": 8, "places": 11}
    # only pool images are used
    sub = interp.build_support_set("random", cats, pool[50:], 20, rng=1)
    assert sub.min() >= 50
    with pytest.raises(ValueError, match="food"):
        interp.build_support_set("category", cats, pool, 20, category="food")
    with pytest.raises(ValueError):
        interp.build_support_set("other", cats, pool, 5)


def test_prompt_classification_and_confusion():
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1]])
    b = np.array([10.0, -3.0, 0.0, 0.0])  # biases never change the winner
    T = np.eye(2)
    np.testing.assert_allclose(interp.prompt_responses(W, b, T)[0], [11.0, 10.0])
    pred = interp.classify_by_prompts(W, b, T, ["faces", "places"])
    assert pred.tolist() == ["faces", "places", "places", "faces"]
    roi = np.array(["FFA", "PPA", "FFA", "other"])
    conf = interp.prompt_confusion(roi, pred, categories=("faces", "places"))
    assert conf.loc["FFA", "accuracy"] == 0.5 and conf.loc["PPA", "accuracy"] == 1.0
    assert conf.loc["FFA", "n_voxels"] == 2 and "other" not in conf.index
    np.testing.assert_allclose(conf[["faces", "places"]].sum(axis=1), 1.0)
    by_cat = interp.prompt_confusion(roi, pred, categories=("faces", "places"), by="category")
    assert list(by_cat.index) == ["faces", "places"]
    with pytest.raises(ValueError):
        interp.classify_by_prompts(W, b, T, ["only one"])


def test_shared_offset_does_not_change_argmax(rng):
    W = rng.standard_normal((50, 8))
    b = rng.standard_normal(50)
    T = rng.standard_normal((5, 8))
    labels = list("abcde")
    offset = 3.0 * rng.standard_normal(8)
    assert np.array_equal(interp.classify_by_prompts(W, b, T, labels),
                          interp.classify_by_prompts(W, b, T + offset, labels))


def test_modality_gap_and_closing_it(rng):
    from braincorl_lite.simulate import TextEncoder, World

    world = World(0)
    images = world.sample_images(300, rng)
    enc = TextEncoder(world)
    texts = enc.encode(list(images["captions"][:200]))
    gap = interp.modality_gap(images["features"], texts)
    assert gap["centroid_distance"] > 0.2
    assert gap["cos_image_text"] < gap["cos_image_image"] < gap["cos_text_text"]
    closed = interp.close_modality_gap(texts, images["features"])
    np.testing.assert_allclose(np.linalg.norm(closed, axis=1), 1, atol=1e-5)
    assert interp.modality_gap(images["features"], closed)["centroid_distance"] < 0.5 * gap["centroid_distance"]


def test_roi_category_mapping():
    assert interp.ROI_CATEGORY["FFA"] == "faces" and interp.ROI_CATEGORY["PPA"] == "places"
    assert interp.ROI_CATEGORY["EBA"] == "bodies" and interp.ROI_CATEGORY["VWFA"] == "words"
    assert set(interp.CATEGORY_PROMPTS) == {"faces", "bodies", "places", "food", "words"}


def test_attention_spread_bounds():
    from braincorl_lite.interpretation import attention_spread

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(7), size=5)
    s = attention_spread(p)
    assert s.shape == (5,) and np.all((s > 1 / 7) & (s < 1))
    np.testing.assert_allclose(attention_spread(np.full((2, 4), 0.25)), 1.0)
    np.testing.assert_allclose(attention_spread(np.eye(3)), 1 / 3)


def test_pca_project_matches_sklearn(rng):
    from sklearn.decomposition import PCA

    W = rng.standard_normal((60, 6)) * [4, 2, 1, 1, 1, 1]
    scores, explained = interp.pca_project(W, 2)
    unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    ref = PCA(2).fit(unit)
    np.testing.assert_allclose(np.abs(scores), np.abs(ref.transform(unit)), atol=1e-10)
    np.testing.assert_allclose(explained, ref.explained_variance_ratio_)


def test_embed_2d_falls_back_to_pca_without_umap(rng, monkeypatch):
    import sys

    W = rng.standard_normal((40, 6))
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    coords, name = interp.embed_2d(W)
    assert name == "PCA (umap-learn not installed)"
    np.testing.assert_allclose(coords, interp.pca_project(W, 2)[0])
    assert interp.embed_2d(W, method="pca")[1] == "PCA"
    with pytest.raises(ImportError, match="umap-learn"):
        interp.embed_2d(W, method="umap")
    with pytest.raises(ValueError):
        interp.embed_2d(W, method="tsne")


def test_embed_2d_uses_umap_when_installed(rng):
    pytest.importorskip("umap")
    coords, name = interp.embed_2d(rng.standard_normal((40, 6)), n_neighbors=5)
    assert name == "UMAP" and coords.shape == (40, 2)
