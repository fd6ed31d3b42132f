import numpy as np
import pytest

from braincorl_lite.metrics import explained_variance
from braincorl_lite.cortex import ROIS, cortex_template, fsaverage5_mesh, roi_labels
from braincorl_lite.simulate import (CATEGORIES, SIZES, TextEncoder, World, noun_phrase, simulate_simb5k,
                                     simulate_simnsd)


def test_deterministic_for_fixed_seeds(tiny):
    again = simulate_simnsd("tiny")
    for a, b in zip(tiny, again):
        assert np.array_equal(a.betas, b.betas)
        assert np.array_equal(a.truth.weights, b.truth.weights)
        assert np.array_equal(a.vertex, b.vertex)
        assert np.array_equal(a.captions, b.captions)


def test_subject_seed_gives_new_people_in_the_same_world(tiny):
    other = simulate_simnsd("tiny", subject_seed=7)
    # same world: same concepts, same prior, same shared images
    assert np.array_equal(tiny.world.prototypes, other.world.prototypes)
    assert np.array_equal(tiny.prior.means, other.prior.means)
    a, b = tiny[0], other[0]
    assert np.array_equal(a.features[a.shared_mask], b.features[b.shared_mask])
    assert np.array_equal(a.image_ids[a.shared_mask], b.image_ids[b.shared_mask])
    # new people: other voxels, weights and unique images
    assert not np.array_equal(a.truth.weights[:10], b.truth.weights[:10])
    assert not np.intersect1d(a.image_ids[~a.shared_mask], b.image_ids[~b.shared_mask]).size
    # and a new world seed changes the world
    assert not np.allclose(World(1).prototypes, tiny.world.prototypes)


def test_container_contents(tiny):
    names = set(ROIS) | {"other"}
    ids = []
    for s in tiny:
        assert s.features.shape[1] == 512
        assert np.allclose(np.linalg.norm(s.features, axis=1), 1, atol=1e-5)
        assert set(s.roi) <= names
        assert s.n_repeats == 3
        assert s.vertex.min() >= 0 and s.vertex.max() < 20484
        assert len(np.unique(s.vertex)) == s.n_voxels
        assert s.is_simulated and s.meta["simulated"]
        assert np.all((s.noise_ceiling >= 0) & (s.noise_ceiling <= 1))
        ids.append(set(s.image_ids[~s.shared_mask].tolist()))
    # unique images are unique to each subject, shared ones are shared
    assert not ids[0] & ids[1]
    assert np.array_equal(tiny[0].image_ids[tiny[0].shared_mask], tiny[1].image_ids[tiny[1].shared_mask])
    # subjects differ in voxel count
    assert len({s.n_voxels for s in tiny}) > 1


def test_default_size_meets_the_design():
    cfg = SIZES["default"]
    assert cfg.n_subjects >= 8 and cfg.n_unique >= 2000 and cfg.n_shared >= 500 and cfg.n_repeats == 3
    template = cortex_template(cfg.mask_radius)
    assert int(round(cfg.voxel_fraction[0] * len(template))) >= 1500
    coords, hemi = fsaverage5_mesh()
    centres = {roi: [(h, np.array([x, y, z], float)) for h, x, y, z in pts] for roi, (_, pts, _) in ROIS.items()}
    labels = roi_labels(coords[template], hemi[template], centres, {r: v[2] for r, v in ROIS.items()})
    present = set(labels) - {"other"}
    assert present == set(ROIS) and len(present) >= 8
    # the template is occipito-temporal: posterior to y = -25 mm and below the parietal cortex
    assert coords[template, 1].max() < -25 and coords[template, 2].max() < 45


def test_embeddings_are_clip_like(tiny):
    x = tiny[0].features[:300].astype(np.float64)
    cos = x @ x.T
    off = cos[np.triu_indices(len(x), 1)]
    assert 0.3 <= off.mean() <= 0.6
    # same-category images are more similar than different-category ones
    cat = np.array(tiny[0].meta["image_category"][:300])
    same = cat[:, None] == cat[None, :]
    iu = np.triu_indices(len(x), 1)
    assert cos[iu][same[iu]].mean() > cos[iu][~same[iu]].mean() + 0.05
    # a decaying spectrum spread over many dimensions, as CLIP's is
    ev = np.linalg.eigvalsh(np.cov(tiny.world.sample_images(3000, np.random.default_rng(0))["features"].T))[::-1]
    assert 0.2 < ev[:20].sum() / ev.sum() < 0.6
    assert 0.45 < ev[:100].sum() / ev.sum() < 0.9
    assert ev[0] > 5 * ev[99] and np.all(np.diff(ev[:300]) <= 1e-12)


def test_captions_name_the_concepts(tiny):
    s = tiny[0]
    enc = TextEncoder(tiny.world)
    for cap, cat in list(zip(s.captions, s.meta["image_category"]))[:50]:
        words = enc.match(cap)
        assert words, cap
        assert any(enc.vocab[w] is not None for w in words)
    # every caption names exactly its image's concepts, the main one first
    world = World(0)
    images = world.sample_images(500, np.random.default_rng(5))
    for cap, concepts in zip(images["captions"], images["concepts"]):
        found = [world.concepts[int(np.flatnonzero((world.prototypes == enc.vocab[w]).all(1))[0])]
                 for w in enc.match(cap)]
        assert found == [world.concepts[c] for c in concepts], cap


# words ending in -s that are singular, plurals without an -s, and nouns ending in -ing
_SINGULAR_S = {"bus", "glass", "tennis"}
_ING_NOUNS = {"building", "living"}
_PLURAL_NO_S = {"men", "women", "people", "feet", "sheep", "cattle"}


def _article_errors(caption):
    """Article/number disagreements in a caption, judged without the generator's own word lists."""
    tokens = caption.split()
    errors = []
    for art, word in zip(tokens, tokens[1:]):
        plural = word in _PLURAL_NO_S or (word.endswith("s") and word not in _SINGULAR_S)
        if art in ("a", "an") and (plural or (word.endswith("ing") and word not in _ING_NOUNS) or word in ("grass", "text", "snow", "tennis")):
            errors.append(f"{art} {word}")
        if (art == "a" and word[0] in "aeiou") or (art == "an" and word[0] not in "aeiou"):
            errors.append(f"{art} {word}")
    return errors


def test_captions_are_grammatical():
    assert _article_errors("a photo of a boats") and _article_errors("a men with a chairs")  # the check can fail
    assert _article_errors("a umbrella") and _article_errors("a smiling")
    world = World(0)
    for mix in ("nsd", "b5k"):
        captions = world.sample_images(3000, np.random.default_rng(1), mix)["captions"]
        assert len(set(captions)) > 500
        bad = {c: _article_errors(c) for c in captions if _article_errors(c)}
        assert not bad, list(bad.items())[:5]
        assert all(c.startswith("a photo of ") or " with " in c for c in captions)
    # every synonym, not only those captions draw, makes a grammatical phrase
    for concepts in CATEGORIES.values():
        for syn in concepts.values():
            for word in syn:
                assert not _article_errors(noun_phrase(word)), (word, noun_phrase(word))


def test_true_weights_reach_the_noise_ceiling():
    # without the feature-invisible part of the signal, the true encoder reaches the noise ceiling
    ds = simulate_simnsd("tiny", n_subjects=1, n_shared=2000, unexplained_signal=0.0)
    s = ds[0]
    q = s.shared_idx
    ev = explained_variance(s.betas[q], s.truth.predict(s.features[q]))
    assert abs(ev.mean() - s.noise_ceiling.mean()) < 0.02
    # with it (the default), the true encoder falls short of the ceiling
    ds = simulate_simnsd("tiny", n_subjects=1, n_shared=2000)
    s = ds[0]
    ev = explained_variance(s.betas[q], s.truth.predict(s.features[q]))
    assert ev.mean() < s.noise_ceiling.mean() - 0.02


def test_roi_category_preference_from_true_weights(tiny):
    # probe the true weights with a large fresh image set, so category means are precise
    images = tiny.world.sample_images(4000, np.random.default_rng(3))
    cat = images["category"]
    for s in tiny:
        resp = s.truth.predict(images["features"])
        comp_names = np.array(s.meta["components"])[s.truth.component]
        for roi, (category, _, _) in ROIS.items():
            vox = (s.roi == roi) & (comp_names == roi)
            if vox.sum() < 2:
                continue
            mean_by_cat = {c: resp[cat == c][:, vox].mean() for c in CATEGORIES if (cat == c).any()}
            assert max(mean_by_cat, key=mean_by_cat.get) == category, (s.subject, roi, mean_by_cat)


def test_weights_concentrate_in_top_feature_pcs(tiny):
    world = tiny.world
    _, cov = world.feature_stats
    evals, evecs = np.linalg.eigh(cov)
    top = evecs[:, ::-1][:, :50]  # top 10% of the 512 principal components
    W = np.vstack([s.truth.weights for s in tiny]).astype(np.float64)
    W = W - W.mean(0)
    share = ((W @ top) ** 2).sum() / (W ** 2).sum()
    assert share > 0.3  # a random direction would put ~0.1 there
    # and in signal terms (variance over images) far more
    sig_share = ((W @ top) ** 2 * evals[::-1][:50]).sum() / np.einsum("ij,jk,ik->", W, cov, W)
    assert sig_share > 0.8


def test_noise_ceilings_in_nsd_range(tiny):
    nc = np.concatenate([s.noise_ceiling for s in tiny])
    roi = np.concatenate([s.roi for s in tiny])
    assert 0.15 < nc.mean() < 0.5
    assert nc[roi != "other"].mean() > nc[roi == "other"].mean()


def test_text_encoder():
    world = World(0)
    enc = TextEncoder(world)
    e = enc.encode(["a photo of a face", "a smiling woman", "a house", "food on a plate"])
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    proto = {c: world.prototypes[i] for i, c in enumerate(world.concepts)}
    assert e[0] @ proto["face"] > e[0] @ proto["house"]
    assert e[2] @ proto["house"] > e[2] @ proto["face"]
    # synonyms map to the same concept
    assert np.allclose(enc.encode("a puppy"), enc.encode("a dog"))
    # a modality gap: text embeddings sit apart from images
    imgs = world.sample_images(500, np.random.default_rng(0))["features"]
    assert (imgs @ e[0]).mean() < (imgs @ imgs.T).mean()
    with pytest.warns(UserWarning, match="no known concept"):
        enc.encode("qwertyuiop")


def test_simb5k_is_harder_and_different():
    b5k = simulate_simb5k("tiny")
    nsd = simulate_simnsd("tiny", subject_seed=5000)
    assert b5k[0].meta["dataset"] == "simb5k"
    assert np.mean([s.noise_ceiling.mean() for s in b5k]) < np.mean([s.noise_ceiling.mean() for s in nsd])
    cat_b = np.array(b5k[0].meta["image_category"])
    cat_n = np.array(nsd[0].meta["image_category"])
    assert (cat_b == "places").mean() > (cat_n == "places").mean()
    assert (cat_b == "faces").mean() < (cat_n == "faces").mean()
    assert b5k[0].n_repeats == 2
