"""Tests of braincorl_lite.nsd (design, prepare, the prepare-nsd command) on tiny files in NSD's exact formats (and on NSD's real design)."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest

from braincorl_lite import cortex
from braincorl_lite.data import load_subject
from braincorl_lite.nsd import cli as cli_real
from braincorl_lite.nsd import fetch
from braincorl_lite.nsd.design import (
    FLOC_FILES, FLOC_LABELS, NSD_PUBLIC_SESSIONS, ROI_MAP, NSDFormatError, parse_sessions, read_design,
)
from braincorl_lite.metrics import noise_ceiling_from_ncsnr
from braincorl_lite.nsd.prepare import prepare_subject
from conftest_real import SHARED_DESIGN, write_betas, write_nifti


def voxel_ijk(data):
    return data.voxel_info["ijk"]

SESSIONS = [1, 2, 3]


def reference(tree, sessions=SESSIONS, min_repeats=1):
    """Straightforward dense recomputation: whole volumes, loops over trials."""
    mask = tree.general > 0
    mo = tree.design["masterordering"].ravel().astype(int) - 1
    si = tree.design["subjectim"][tree.subject - 1].astype(int) - 1
    trials = {}
    for s in sessions:
        with h5py.File(tree.paths[f"betas{s}"], "r") as fh:
            raw = fh["betas"][()]
        vol = raw.transpose(0, 3, 2, 1).astype(np.float64) / 300.0   # (750, X, Y, Z)
        x = vol[:, mask]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (x - x.mean(axis=0)) / x.std(axis=0)
        for t in range(750):
            trials.setdefault(int(si[mo[(s - 1) * 750 + t]]), []).append(z[t])
    ids = np.array(sorted(k for k, v in trials.items() if len(v) >= min_repeats))
    reps = [np.array(trials[i]) for i in ids]
    n = np.array([r.shape[0] for r in reps])
    avg = np.array([r.mean(axis=0) for r in reps])
    within = sum(((r - r.mean(axis=0)) ** 2).sum(axis=0) for r in reps) / np.sum(n - 1)
    snr = np.sqrt(np.maximum(0, 1 - within)) / np.sqrt(within)
    nc = snr ** 2 / (snr ** 2 + np.mean(1.0 / n))
    good = np.all(np.isfinite(avg), axis=0)
    return ids, n, avg[:, good], nc[good], np.argwhere(mask)[good]


@pytest.fixture(scope="module")
def prepared(tiny_nsd_shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "subj01.npz"
    data = prepare_subject(1, tiny_nsd_shared.features, out, nsd_root=tiny_nsd_shared.root, sessions=SESSIONS,
                           verify=False, progress=False)
    return data, out


# ---------------------------------------------------------------------- end to end
def test_prepare_matches_dense_reference(tiny_nsd_shared, prepared):
    data, _ = prepared
    ids, n, avg, nc, ijk = reference(tiny_nsd_shared)
    np.testing.assert_array_equal(data.image_ids, ids)
    np.testing.assert_array_equal(data.image_info["n_repeats"], n)
    np.testing.assert_array_equal(voxel_ijk(data), ijk)
    np.testing.assert_allclose(data.betas, avg, atol=2e-5)
    np.testing.assert_allclose(data.noise_ceiling, nc, atol=1e-5)
    # z-scoring within session: every session's block of trials had mean 0, sd 1 per voxel, so the
    # averaged betas are on that scale too, whatever the session offsets and gains were
    assert abs(float(data.betas.mean())) < 0.2


def test_sign_voxel_by_hand(tiny_nsd_shared, prepared):
    """The 'sign' voxel is +1 % on even trials and -1 % on odd trials in every session, so its
    z-scores are exactly +1/-1 and each image's beta is the mean of the signs of its trials."""
    data, _ = prepared
    tree = tiny_nsd_shared
    col = int(np.flatnonzero((voxel_ijk(data) == tree.special["sign"]).all(axis=1))[0])
    mo = tree.design["masterordering"].ravel().astype(int) - 1
    si = tree.design["subjectim"][0].astype(int) - 1
    signs = {}
    for t in range(3 * 750):
        signs.setdefault(int(si[mo[t]]), []).append(1.0 if (t % 750) % 2 == 0 else -1.0)
    for row in (0, 7, 500, len(data.image_ids) - 1):
        img = int(data.image_ids[row])
        assert data.betas[row, col] == pytest.approx(np.mean(signs[img]), abs=1e-6)
    allowed = np.array([1.0, -1.0, 1 / 3, -1 / 3, 0.0])
    assert np.abs(data.betas[:, col, None] - allowed).min(axis=1).max() < 1e-6


def test_shared_unique_split_and_repeats(tiny_nsd_shared, prepared):
    data, _ = prepared
    shared = tiny_nsd_shared.design["sharedix"].ravel() - 1
    np.testing.assert_array_equal(data.shared_mask, np.isin(data.image_ids, shared))
    # the tiny design shows 100 + 50 + 50 shared and 200 + 400 + 400 unique images in sessions 1-3
    assert data.shared_mask.sum() == 200 and (~data.shared_mask).sum() == 1000
    assert data.n_repeats == 3
    assert sorted(set(data.image_info["n_repeats"].tolist())) == [1, 2, 3]


def test_min_repeats_three(tiny_nsd_shared):
    data = prepare_subject(1, tiny_nsd_shared.features, nsd_root=tiny_nsd_shared.root, sessions=SESSIONS,
                           min_repeats=3, verify=False, progress=False)
    ids, n, avg, nc, _ = reference(tiny_nsd_shared, min_repeats=3)
    assert data.n_images == 300 and data.shared_mask.sum() == 100
    np.testing.assert_array_equal(data.image_ids, ids)
    np.testing.assert_allclose(data.betas, avg, atol=2e-5)
    np.testing.assert_allclose(data.noise_ceiling, nc, atol=1e-5)
    assert data.meta["noise_ceiling"]["mean_inv_n"] == pytest.approx(1 / 3)


def test_roi_labels(tiny_nsd_shared, prepared):
    data, _ = prepared
    sp = tiny_nsd_shared.special
    ijk = [tuple(v) for v in voxel_ijk(data)]
    label = dict(zip(ijk, data.roi))
    fine = dict(zip(ijk, data.voxel_info["roi_nsd"]))
    assert label[sp["ffa1"]] == "FFA" and fine[sp["ffa1"]] == "FFA-1"
    assert label[sp["ffa2"]] == "FFA" and fine[sp["ffa2"]] == "FFA-2"
    assert label[sp["ofa"]] == "OFA"
    assert label[sp["ppa"]] == "PPA"
    assert label[sp["eba"]] == "EBA"
    assert label[sp["vwfa1"]] == "VWFA"
    assert label[sp["mtl_faces"]] == "other" and fine[sp["mtl_faces"]] == "mTL-faces"
    assert label[sp["owfa"]] == "other" and fine[sp["owfa"]] == "OWFA"
    assert label[sp["overlap"]] == "FFA"          # faces take precedence over bodies
    assert data.meta["roi_overlaps"] == 1
    assert sp["label_outside_general"] not in label and sp["outside"] not in label
    assert (data.roi == "other").sum() == len(ijk) - 7
    assert "food" not in set(data.roi)


def test_nan_voxel_dropped_and_reported(tiny_nsd_shared, prepared):
    data, _ = prepared
    flat = list(tiny_nsd_shared.special["flat"])
    assert data.meta["n_voxels_dropped_nan"] == 1
    assert data.meta["dropped_voxel_ijk"] == [flat]
    assert flat not in voxel_ijk(data).tolist()
    assert data.meta["n_voxels_nsdgeneral"] == int((tiny_nsd_shared.general > 0).sum())
    assert np.isfinite(data.betas).all()


def test_container_fields_and_roundtrip(prepared):
    data, out = prepared
    assert data.truth is None and not data.is_simulated
    assert (data.vertex == -1).all()
    assert data.subject == "subj01"
    m = data.meta
    assert m["dataset"] == "nsd" and m["subject"] == 1 and m["space"] == "func1pt8mm"
    assert m["sessions"] == SESSIONS and data.voxel_info["ijk"].shape == (data.n_voxels, 3)
    assert set(data.voxel_info) == {"ijk", "roi_nsd", "ncsnr"} and set(data.image_info) == {"n_repeats", "coco_id"}
    assert not {"voxel_ijk", "roi_nsd", "ncsnr", "repeats_per_image", "coco_ids"} & set(m)  # arrays, not JSON lists
    json.dumps(m)  # JSON-serialisable
    np.testing.assert_allclose(np.linalg.norm(data.features, axis=1), 1, atol=1e-5)
    back = load_subject(out)
    np.testing.assert_array_equal(back.betas, data.betas)
    np.testing.assert_array_equal(back.roi, data.roi)
    for name in ("voxel_info", "image_info"):
        assert set(getattr(back, name)) == set(getattr(data, name))
        for key, arr in getattr(data, name).items():
            np.testing.assert_array_equal(getattr(back, name)[key], arr)
    # per-voxel arrays are sliced with the voxels
    idx = np.array([4, 0, 2])
    sel = back.select_voxels(idx)
    for key, arr in data.voxel_info.items():
        np.testing.assert_array_equal(sel.voxel_info[key], arr[idx])
    np.testing.assert_array_equal(sel.image_info["coco_id"], data.image_info["coco_id"])


def test_stim_info_cross_check_and_coco_ids(prepared):
    data, _ = prepared
    np.testing.assert_array_equal(data.image_info["coco_id"], data.image_ids * 7 + 9)


def test_ncsnr_from_nsd_file(tiny_nsd_shared):
    import nibabel as nib

    data = prepare_subject(1, tiny_nsd_shared.features, nsd_root=tiny_nsd_shared.root, sessions=SESSIONS,
                           ncsnr="nsd", verify=False, progress=False)
    snr = np.asarray(nib.load(str(tiny_nsd_shared.paths["ncsnr"])).dataobj)
    ijk = voxel_ijk(data)
    mine = snr[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    n = data.image_info["n_repeats"]
    np.testing.assert_allclose(data.noise_ceiling, mine ** 2 / (mine ** 2 + np.mean(1 / n)), rtol=1e-5)


def test_reads_one_z_slab_at_a_time(tiny_nsd, monkeypatch):
    """Memory bound: betas are read as single z-slabs of the mask's bounding box, never whole."""
    keys = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.name == "/betas":
            keys.append(key)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)
    assert keys and all(isinstance(k[1], int) for k in keys)
    Z = tiny_nsd.shape[2]
    assert len(keys) <= Z


def test_cache_layout_is_default_root(tiny_nsd, monkeypatch, tmp_path):
    """Without nsd_root the files are looked up in $BRAINCORL_DATA/nsd with the bucket layout."""
    cache = tmp_path / "cache"
    (cache).mkdir()
    tiny_nsd.root.rename(cache / "nsd")
    monkeypatch.setenv(fetch.ENV_CACHE, str(cache))
    data = prepare_subject(1, cache / "nsd" / tiny_nsd.features.name, sessions=[1, 2], verify=False, progress=False)
    assert data.meta["sessions"] == [1, 2]
    with pytest.raises(fetch.MissingDataError, match="fetch nsd --subject 1 --sessions 4 --what betas"):
        prepare_subject(1, cache / "nsd" / tiny_nsd.features.name, sessions=[1, 2, 3, 4], verify=False,
                        progress=False)


# ---------------------------------------------------------------------- bad inputs
def test_missing_session_fails_before_writing(tiny_nsd, tmp_path):
    out = tmp_path / "out.npz"
    with pytest.raises(fetch.MissingDataError, match="session=4"):
        prepare_subject(1, tiny_nsd.features, out, nsd_root=tiny_nsd.root, sessions=[1, 2, 3, 4], verify=False,
                        progress=False)
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_truncated_hdf5(tiny_nsd, tmp_path):
    path = tiny_nsd.paths["betas2"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.npz"
    with pytest.raises(NSDFormatError, match="session 2.*truncated or corrupt"):
        prepare_subject(1, tiny_nsd.features, out, nsd_root=tiny_nsd.root, sessions=SESSIONS, verify=False,
                        progress=False)
    assert not list(tmp_path.glob("out*"))


def test_wrong_mask_shape(tiny_nsd, tmp_path):
    write_nifti(tiny_nsd.paths["floc-places"], np.zeros((6, 7, 4), dtype=np.int16))
    with pytest.raises(NSDFormatError, match=r"\(6, 7, 4\) differs from nsdgeneral's \(6, 7, 5\)"):
        prepare_subject(1, tiny_nsd.features, tmp_path / "o.npz", nsd_root=tiny_nsd.root, sessions=[1],
                        verify=False, progress=False)
    assert not (tmp_path / "o.npz").exists()


def test_betas_of_another_volume(tiny_nsd):
    write_betas(tiny_nsd.paths["betas1"], np.zeros((750, 5, 7, 7), dtype=np.int16))
    with pytest.raises(NSDFormatError, match=r"expected \(750, 5, 7, 6\)"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)


def test_betas_wrong_dataset_name_or_dtype(tiny_nsd):
    path = tiny_nsd.paths["betas1"]
    with h5py.File(path, "w") as fh:
        fh.create_dataset("data", data=np.zeros((750, 5, 7, 6), dtype=np.int16))
    with pytest.raises(NSDFormatError, match="no dataset 'betas'"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("betas", data=np.zeros((750, 5, 7, 6), dtype=np.float32))
    with pytest.raises(NSDFormatError, match="int16"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)


def test_wrong_label_table(tiny_nsd):
    ctab = tiny_nsd.root / fetch.get_entry("nsd.ctab.floc-faces", subject=1).local
    ctab.write_text("0 Unknown\n1 FFA-1\n2 OFA\n")
    with pytest.raises(NSDFormatError, match="FLOC_LABELS"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)


def test_features_missing_images(tiny_nsd):
    ids = np.arange(10)
    feats = np.eye(10, 8)[:, :8]
    feats[8:, 0] = 1.0
    with pytest.raises(ValueError, match="lack .* of the .* images"):
        prepare_subject(1, (ids, feats), nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)


def test_design_hash_checked_by_default(tiny_nsd):
    """The tiny design is not NSD's file: with verification on, its manifest sha256 rejects it."""
    with pytest.raises(fetch.HashMismatchError, match="nsd.expdesign"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], progress=False)


def test_no_repeats_no_noise_ceiling(tiny_nsd):
    from scipy.io import savemat

    design = dict(tiny_nsd.design)
    mo = np.arange(30000) % 10000 + 1  # every image once per 10,000 trials: no repeat within session 1
    design["masterordering"] = mo[None, :].astype(np.uint16)
    savemat(str(tiny_nsd.paths["design"]), design)
    with pytest.raises(ValueError, match="noise ceiling cannot be computed"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)


# ---------------------------------------------------------------------- helpers
def test_parse_sessions():
    assert parse_sessions("1-3,5", 1) == [1, 2, 3, 5]
    assert parse_sessions(None, 1) == list(range(1, 38))
    assert parse_sessions("public", 8) == list(range(1, NSD_PUBLIC_SESSIONS[8] + 1))
    assert parse_sessions("all", 3) == list(range(1, 33))
    assert parse_sessions([3, 1, 3], 2) == [1, 3]
    with pytest.raises(ValueError, match="1..30"):
        parse_sessions("29-31", 4)
    with pytest.raises(ValueError, match="cannot read"):
        parse_sessions("a-b", 1)


def test_roi_map_uses_the_cortex_rois():
    """NSD's fLoc labels map onto the ROIs of braincorl_lite.cortex, each with its file's category."""
    assert set(ROI_MAP.values()) <= set(cortex.ROIS)
    for name in FLOC_FILES:
        category = name.split("-")[1]
        assert category in cortex.NSD_ROI_CATEGORIES
        for label in FLOC_LABELS[name].values():
            if label in ROI_MAP:
                assert cortex.ROI_CATEGORY[ROI_MAP[label]] == category, label


def test_noise_ceiling_formula():
    assert noise_ceiling_from_ncsnr(np.array([1.0]), 3)[0] == pytest.approx(0.75)
    # a mixture of images averaged over 3, 2 and 1 trials uses mean(1/n)
    mix = noise_ceiling_from_ncsnr(np.array([1.0]), [3, 2, 1])[0]
    assert mix == pytest.approx(1 / (1 + (1 / 3 + 1 / 2 + 1) / 3))
    assert noise_ceiling_from_ncsnr(np.array([np.inf, 0.0]), 3).tolist() == [1.0, 0.0]


def test_read_tiny_design(tiny_nsd):
    d = read_design(tiny_nsd.paths["design"])
    assert d.masterordering.shape == (30000,) and d.subjectim.shape == (8, 10000) and d.sharedix.shape == (1000,)
    assert d.n_sessions == 40
    ids = d.trial_image_ids(1, [1, 2])
    assert ids.shape == (2, 750) and ids.min() >= 0


def test_read_design_rejects_other_mat(tmp_path):
    from scipy.io import savemat

    savemat(str(tmp_path / "x.mat"), {"foo": np.ones(3)})
    with pytest.raises(NSDFormatError, match="lacks the key"):
        read_design(tmp_path / "x.mat")
    (tmp_path / "y.mat").write_bytes(b"not a mat file")
    with pytest.raises(NSDFormatError, match="cannot read"):
        read_design(tmp_path / "y.mat")


@pytest.mark.skipif(not SHARED_DESIGN.exists(), reason=f"NSD's real design file is not at {SHARED_DESIGN}")
def test_real_nsd_design_invariants():
    """NSD's published design: checked against the numbers of the NSD data manual."""
    from scipy.io import loadmat

    raw = loadmat(str(SHARED_DESIGN))
    assert raw["masterordering"].shape == (1, 30000) and raw["masterordering"].dtype == np.uint16
    assert raw["subjectim"].shape == (8, 10000) and raw["subjectim"].dtype == np.int32
    assert raw["sharedix"].shape == (1, 1000) and raw["sharedix"].dtype == np.int32
    d = read_design(SHARED_DESIGN)
    assert d.n_sessions == 40
    # every subject: 10,000 distinct images, the first 1,000 of which are the shared ones
    for s in range(8):
        assert np.unique(d.subjectim[s]).size == 10000
        np.testing.assert_array_equal(np.sort(d.subjectim[s, :1000]), np.sort(d.sharedix))
    # the unique images of different subjects do not overlap; 73k ids in total
    uniques = np.concatenate([d.subjectim[s, 1000:] for s in range(8)])
    assert np.unique(uniques).size == 72000 and not np.isin(uniques, d.sharedix).any()
    # each of the 10,000 images is shown exactly 3 times over the 30,000 trials
    counts = np.bincount(d.masterordering, minlength=10000)
    assert counts.min() == counts.max() == 3
    # NSD manual, "Technical notes": distinct images / images shown 3x for 40, 32 and 30 sessions
    for n_sess, seen, thrice, shared_all3 in ((40, 10000, 10000, 1000), (32, 9411, 6234, 614), (30, 9209, 5445, 515)):
        c = np.bincount(d.masterordering[: n_sess * 750], minlength=10000)
        assert (c > 0).sum() == seen and (c == 3).sum() == thrice
        assert (c[:1000] == 3).sum() == shared_all3
    # shared images seen by subjects with 30 sessions: 907 (NSD manual)
    ids = d.trial_image_ids(4, range(1, 31))
    assert np.isin(d.sharedix, ids).sum() == 907


@pytest.mark.skipif(not SHARED_DESIGN.exists(), reason=f"NSD's real design file is not at {SHARED_DESIGN}")
def test_real_design_matches_manifest_hash():
    entry = fetch.get_entry("nsd.expdesign")
    assert SHARED_DESIGN.stat().st_size == entry.size_bytes
    assert fetch.verify_file(entry, SHARED_DESIGN, pin_if_unknown=False) == entry.sha256


# ---------------------------------------------------------------------- CLI
def _parser():
    parser = argparse.ArgumentParser(prog="braincorl-lite")
    cli_real.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_prepare_nsd(tiny_nsd, tmp_path, capsys):
    out = tmp_path / "subj01.npz"
    args = _parser().parse_args([
        "prepare-nsd", "--subject", "1", "--features", str(tiny_nsd.features), "--out", str(out),
        "--sessions", "1-3", "--nsd-root", str(tiny_nsd.root), "--no-verify", "--no-progress",
    ])
    assert args.func(args) == 0
    data = load_subject(out)
    assert data.meta["dataset"] == "nsd" and data.n_images == 1200
    assert "saved" in capsys.readouterr().out
    # refuses to overwrite; clear error, exit code 1
    assert args.func(args) == 1
    assert "exists" in capsys.readouterr().err


def test_cli_prepare_nsd_error_exit_code(tiny_nsd, tmp_path, capsys):
    args = _parser().parse_args([
        "prepare-nsd", "--subject", "1", "--features", str(tiny_nsd.features), "--out", str(tmp_path / "o.npz"),
        "--sessions", "1-4", "--nsd-root", str(tiny_nsd.root), "--no-verify", "--no-progress",
    ])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "prepare-nsd: error" in err and "session=4" in err
    assert not (tmp_path / "o.npz").exists()


def test_cli_help_texts():
    parser = _parser()
    for cmd in (["prepare-nsd"], ["extract-features"], ["fetch"], ["fetch", "nsd"], ["fetch", "clip"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(cmd + ["--help"])
        assert exc.value.code == 0


# ---------------------------------------------------------------------- refusals and voxel sets
def test_all_flat_betas_are_refused(tiny_nsd, tmp_path, capsys):
    """Zero-filled betas make every voxel flat: refuse instead of writing a 0-voxel subject."""
    write_betas(tiny_nsd.paths["betas1"], np.zeros((750, 5, 7, 6), dtype=np.int16))
    out = tmp_path / "o.npz"
    with pytest.raises(NSDFormatError, match=r"all \d+ voxels have constant .*betas_session01.hdf5"):
        prepare_subject(1, tiny_nsd.features, out, nsd_root=tiny_nsd.root, sessions=[1], verify=False,
                        progress=False)
    assert not out.exists()
    args = _parser().parse_args([
        "prepare-nsd", "--subject", "1", "--features", str(tiny_nsd.features), "--out", str(out),
        "--sessions", "1", "--nsd-root", str(tiny_nsd.root), "--no-verify", "--no-progress",
    ])
    assert args.func(args) == 1 and not out.exists()
    assert "constant (flat)" in capsys.readouterr().err


def test_non_integer_roi_mask_is_refused(tiny_nsd):
    general = tiny_nsd.general.astype(np.float32)
    general[general > 0] = 0.5  # e.g. an interpolated (resampled) mask
    write_nifti(tiny_nsd.paths["nsdgeneral"], general)
    with pytest.raises(NSDFormatError, match=r"nsdgeneral.nii.gz: the nsdgeneral ROI volume holds \d+ non-integer"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)
    write_nifti(tiny_nsd.paths["nsdgeneral"], tiny_nsd.general)
    places = tiny_nsd.floc["floc-places"].astype(np.float32)
    places[tiny_nsd.special["ppa"]] = 1.5
    write_nifti(tiny_nsd.paths["floc-places"], places)
    with pytest.raises(NSDFormatError, match=r"floc-places.nii.gz: .* non-integer value\(s\) \(e.g. 1.5\)"):
        prepare_subject(1, tiny_nsd.features, nsd_root=tiny_nsd.root, sessions=[1], verify=False, progress=False)


def test_higher_visual_voxel_set(tiny_nsd_shared, prepared, tmp_path):
    """--voxels higher-visual keeps the nsdgeneral voxels inside a fLoc ROI; the choice is recorded."""
    tree = tiny_nsd_shared
    full, _ = prepared
    out = tmp_path / "hv.npz"
    args = _parser().parse_args([
        "prepare-nsd", "--subject", "1", "--features", str(tree.features), "--out", str(out),
        "--sessions", "1-3", "--nsd-root", str(tree.root), "--no-verify", "--no-progress",
        "--voxels", "higher-visual",
    ])
    assert args.func(args) == 0
    data = load_subject(out)
    in_floc = np.logical_or.reduce([v > 0 for v in tree.floc.values()])
    want = np.argwhere((tree.general > 0) & in_floc)
    np.testing.assert_array_equal(voxel_ijk(data), want)
    sp = tree.special
    assert sp["label_outside_general"] not in [tuple(v) for v in want]  # fLoc label outside nsdgeneral: out
    assert set(data.roi) == {"FFA", "OFA", "PPA", "EBA", "VWFA", "other"}  # mTL-faces, OWFA are "other"
    # the same voxels, with the same values, as in the nsdgeneral container
    cols = [full.voxel_info["ijk"].tolist().index(v) for v in want.tolist()]
    np.testing.assert_allclose(data.betas, full.betas[:, cols], atol=1e-6)
    np.testing.assert_allclose(data.noise_ceiling, full.noise_ceiling[cols], atol=1e-6)
    vs = data.meta["voxel_set"]
    assert vs["name"] == "higher-visual" and vs["n_voxels"] == len(want) == data.n_voxels
    assert "floc-faces" in vs["source"] and "nsdgeneral" in vs["source"] and "leomqyu/BraInCoRL" in vs["note"]
    assert data.meta["n_voxels_nsdgeneral"] == int((tree.general > 0).sum())
    assert full.meta["voxel_set"]["name"] == "nsdgeneral"
