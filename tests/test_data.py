import numpy as np
import pytest

from braincorl_lite.data import EpisodeSampler, SubjectData, atomic_write, check_support, load_subject, save_subject


def _make(rng, n_img=20, n_vox=5, E=8, **over):
    x = rng.standard_normal((n_img, E))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kw = dict(subject="s1", features=x, betas=rng.standard_normal((n_img, n_vox)),
              image_ids=np.arange(n_img), shared_mask=np.arange(n_img) < 5,
              roi=np.array(["FFA"] * 2 + ["other"] * (n_vox - 2)), vertex=np.arange(n_vox),
              noise_ceiling=np.full(n_vox, 0.3))
    kw.update(over)
    return SubjectData(**kw)


def test_valid_container(rng):
    d = _make(rng)
    assert d.n_images == 20 and d.n_voxels == 5 and d.n_features == 8
    assert d.unique_idx.size == 15 and d.shared_idx.size == 5
    assert d.roi_names == ["FFA", "other"]


def test_rejects_nan_betas(rng):
    betas = rng.standard_normal((20, 5))
    betas[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 voxel\(s\) \(first: \[2\]\)"):
        _make(rng, betas=betas)


def test_rejects_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="features have 19 images but betas have 20"):
        x = rng.standard_normal((19, 8))
        _make(rng, features=x / np.linalg.norm(x, axis=1, keepdims=True))
    with pytest.raises(ValueError, match=r"roi must have shape \(5,\)"):
        _make(rng, roi=np.array(["a"] * 4))
    with pytest.raises(ValueError, match=r"shared_mask must have shape \(20,\)"):
        _make(rng, shared_mask=np.zeros(3, bool))


def test_rejects_non_unit_features(rng):
    x = rng.standard_normal((20, 8))
    with pytest.raises(ValueError, match="must be unit-norm"):
        _make(rng, features=x)


def test_rejects_duplicate_image_ids(rng):
    with pytest.raises(ValueError, match="duplicates"):
        _make(rng, image_ids=np.zeros(20, int))


def test_rejects_empty_or_bad_support(rng):
    d = _make(rng)
    with pytest.raises(ValueError, match="support set is empty"):
        check_support([], d)
    with pytest.raises(ValueError, match="shared images"):
        check_support([0, 7], d)
    with pytest.raises(ValueError, match="same image twice"):
        check_support([7, 7], d)
    with pytest.raises(ValueError, match="support set is empty"):
        EpisodeSampler(d).sample(k=0)
    assert check_support([6, 9], d).tolist() == [6, 9]


def test_save_load_roundtrip(tmp_path, tiny):
    subj = tiny[0]
    path = save_subject(subj, tmp_path / "sub.npz")
    back = load_subject(path)
    for name in ("features", "betas", "image_ids", "shared_mask", "roi", "vertex", "noise_ceiling", "captions"):
        assert np.array_equal(getattr(back, name), getattr(subj, name)), name
    assert np.array_equal(back.truth.weights, subj.truth.weights)
    assert np.array_equal(back.truth.unexplained_sd, subj.truth.unexplained_sd)
    assert back.meta == subj.meta and back.subject == subj.subject
    with pytest.raises(FileNotFoundError):
        load_subject(tmp_path / "missing.npz")


def test_episode_sampler(tiny):
    subj = tiny[0]
    ep = EpisodeSampler(subj, seed=1).sample(k=30, n_voxels=10, n_query=40)
    assert ep.support_x.shape == (30, 512) and ep.support_y.shape == (10, 30)
    assert ep.query_x.shape == (40, 512) and ep.query_y.shape == (10, 40)
    assert not subj.shared_mask[ep.support_idx].any()
    assert subj.shared_mask[ep.query_idx].all()
    assert np.array_equal(ep.support_y, subj.betas[ep.support_idx][:, ep.voxels].T)
    ep2 = EpisodeSampler(subj, seed=1, query_from="unique").sample(k=30, n_query=40)
    assert not np.intersect1d(ep2.support_idx, ep2.query_idx).size
    assert not subj.shared_mask[ep2.query_idx].any()
    with pytest.raises(ValueError, match="exceeds"):
        EpisodeSampler(subj).sample(k=subj.unique_idx.size + 1)


def test_select_voxels(tiny):
    subj = tiny[0]
    sub = subj.select_voxels(subj.roi == "other")
    assert sub.n_voxels == int((subj.roi == "other").sum())
    assert sub.truth.weights.shape == (sub.n_voxels, 512)


def test_info_arrays_are_validated_saved_and_sliced(rng, tmp_path):
    d = _make(rng, voxel_info={"ijk": np.arange(15).reshape(5, 3)}, image_info={"coco": np.arange(20) + 7})
    back = load_subject(save_subject(d, tmp_path / "s.npz"))
    assert np.array_equal(back.voxel_info["ijk"], d.voxel_info["ijk"])
    assert np.array_equal(back.image_info["coco"], d.image_info["coco"])
    sub = back.select_voxels([4, 1])
    assert sub.voxel_info["ijk"].tolist() == [[12, 13, 14], [3, 4, 5]] and sub.image_info["coco"].size == 20
    with pytest.raises(ValueError, match=r"voxel_info\['ijk'\] must have 5 rows"):
        _make(rng, voxel_info={"ijk": np.zeros((4, 3))})


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "first" and sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]
