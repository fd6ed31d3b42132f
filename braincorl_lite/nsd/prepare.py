"""One real NSD subject -> :class:`~braincorl_lite.data.SubjectData`, from NSD's own files.

Betas: one HDF5 file per session, dataset ``betas``, int16 percent signal change x 300, written by
MATLAB as X x Y x Z x 750 so that h5py sees **(750, Z, Y, X)**. ROIs: NIfTI volumes (X, Y, Z),
``nsdgeneral`` (voxels > 0 kept) and the fLoc label maps (:data:`~.design.FLOC_LABELS`).

:func:`prepare_subject` streams one session (and one z-slab) at a time: betas / 300, z-scored per
voxel within each session (a voxel flat in any session is dropped), averaged over each image's
repeats; the noise ceiling comes from the pooled within-image variance, NSD's way
(``ncsnr = sqrt(max(0, 1 - s2)) / sqrt(s2)``, then :func:`~braincorl_lite.metrics.noise_ceiling_from_ncsnr`). Peak memory
is about the result plus one session (``benchmarks/prepare_nsd_memory.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..data import SubjectData, save_subject
from ..errors import ConfigError
from ..metrics import noise_ceiling_from_ncsnr
from . import fetch
from .design import (BETA_SCALE, FLOC_FILES, FLOC_LABELS, N_NSD_IMAGES, ROI_MAP, TRIALS_PER_SESSION,
                     NSDFormatError, check_stim_info, open_hdf5, parse_sessions, read_ctab, read_design, read_stim_info)
from .features import load_features

log = logging.getLogger(__name__)

#: voxel sets ``prepare_subject(voxels=...)`` can keep, with the definition recorded in ``meta["voxel_set"]``
VOXEL_SETS = {
    "nsdgeneral": {
        "definition": "nsdgeneral > 0",
        "source": "NSD's nsdgeneral.nii.gz (func1pt8mm), the visual-cortex mask NSD provides",
    },
    "higher-visual": {
        "definition": "nsdgeneral > 0 and (floc-faces > 0 or floc-bodies > 0 or floc-places > 0 or floc-words > 0)",
        "source": "NSD's fLoc category-selective ROI files (floc-faces, floc-bodies, floc-places, floc-words "
                  ".nii.gz, func1pt8mm) intersected with nsdgeneral.nii.gz",
        "note": "an approximation of the paper's higher visual cortex: the official code (GitHub "
                "leomqyu/BraInCoRL, scripts/dataset.py and scripts/test_det.py) loads already masked arrays "
                "(s{N}_unique_nrn_feats_msk.npy) and does not publish the mask that made them",
    },
}


def nsd_paths(subject: int, sessions: Sequence[int], nsd_root: Optional[Union[str, Path]] = None,
              verify: bool = True) -> dict:
    """Paths of one subject's NSD files in ``nsd_root`` (bucket layout) or the cache, checked when
    ``verify`` (``nsd_root``: manifest hashes only); missing optional files are None."""
    manifests = fetch.load_manifests()
    root = Path(nsd_root) if nsd_root is not None else None

    def resolve(name, required=True, **params):
        entry = fetch.get_entry(name, manifests, **params)
        path = entry.path() if root is None else root / entry.local
        if not path.exists():
            if not required:
                return None
            if root is None:
                return fetch.locate(entry)  # raises MissingDataError with the fetch command
            raise fetch.MissingDataError(
                f"{entry.label} is missing from the NSD copy at {root} (expected {path}); download {entry.url} "
                f"there, or fetch it into the cache with `{fetch.fetch_command(entry)}`.")
        if verify and (root is None or entry.sha256):
            fetch.verify_file(entry, path, pin_if_unknown=root is None)
        return path

    return {
        "design": resolve("nsd.expdesign"),
        "nsdgeneral": resolve("nsd.roi.nsdgeneral", subject=subject),
        "floc": {f: resolve(f"nsd.roi.{f}", subject=subject) for f in FLOC_FILES},
        "betas": {s: resolve("nsd.betas_session", subject=subject, session=s) for s in sessions},
        "ctab": {f: resolve(f"nsd.ctab.{f}", required=False, subject=subject) for f in FLOC_FILES},
        "ncsnr": resolve("nsd.ncsnr", required=False, subject=subject),
        "stim_info": resolve("nsd.stim_info", required=False),
    }


def _load_volume(path, what: str, labels: bool = False):
    """A 3-D NIfTI volume and its affine; ``labels`` demands integer values (NaN -> 0)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise NSDFormatError(f"cannot read the {what} volume {path}: {exc}") from exc
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    if data.ndim != 3:
        raise NSDFormatError(f"{path}: the {what} volume must be 3-D (X, Y, Z), got shape {data.shape}")
    data = np.asarray(data, dtype=float)
    if labels:
        finite = data[np.isfinite(data)]
        odd = finite[finite != np.round(finite)]
        if odd.size:
            raise NSDFormatError(
                f"{path}: the {what} ROI volume holds {odd.size} non-integer value(s) (e.g. {odd[0]:g}); NSD's ROI "
                "files are integer label maps. Is it a probability map or a resampled (interpolated) copy? Use "
                "NSD's own func1pt8mm file.")
        data = np.nan_to_num(data).astype(np.int64)
    return data, np.asarray(img.affine, dtype=float)


def _read_rois(paths: dict, voxels: str):
    """Voxel mask, affine, ijk of the kept voxels, their fine fLoc labels, overlaps, nsdgeneral size."""
    general, affine = _load_volume(paths["nsdgeneral"], "nsdgeneral", labels=True)
    mask = general > 0
    if not mask.any():
        raise NSDFormatError(f"{paths['nsdgeneral']}: the nsdgeneral mask has no voxel > 0")
    vols = {}
    for name in FLOC_FILES:
        vols[name], aff = _load_volume(paths["floc"][name], name, labels=True)
        if vols[name].shape != mask.shape:
            raise NSDFormatError(f"{paths['floc'][name]}: shape {vols[name].shape} differs from nsdgeneral's "
                                 f"{mask.shape}; the ROI files must come from the same subject and space (func1pt8mm)")
        if not np.allclose(aff, affine, atol=1e-3):
            raise NSDFormatError(f"{paths['floc'][name]}: its affine differs from nsdgeneral's")
    n_general = int(mask.sum())
    if voxels == "higher-visual":
        mask &= np.logical_or.reduce([v > 0 for v in vols.values()])
        if not mask.any():
            raise NSDFormatError(f"no nsdgeneral voxel lies in any fLoc ROI ({', '.join(FLOC_FILES)}) of this subject")
    ijk = np.argwhere(mask)  # C order over (X, Y, Z)
    fine = np.full(len(ijk), "", dtype=object)
    overlaps = 0
    for name in FLOC_FILES:
        labels, ctab = FLOC_LABELS[name], paths["ctab"].get(name)
        table = read_ctab(ctab) if ctab is not None else {}
        if table and table != labels:
            raise NSDFormatError(f"{ctab}: label table {table} differs from the numbering this code assumes "
                                 f"({labels}); update braincorl_lite.nsd.FLOC_LABELS")
        values = vols[name][mask]
        for value in np.unique(values[values > 0]):
            if value not in labels:
                raise NSDFormatError(f"{paths['floc'][name]}: unknown label value {value} (known: {labels})")
            hit = values == value
            overlaps += int(np.sum(hit & (fine != "")))
            fine[hit & (fine == "")] = labels[value]
    return mask, affine, ijk, fine.astype(str), overlaps, n_general


def _read_session(path, session: int, ijk: np.ndarray, spatial: tuple) -> np.ndarray:
    """Betas (percent signal change) of the kept voxels of one session, float32 (750, n_voxels)."""
    fh, dset = open_hdf5(path, "betas", f"betas of session {session}")
    with fh:
        want = (TRIALS_PER_SESSION,) + tuple(reversed(spatial))
        if dset.shape != want:
            raise NSDFormatError(f"{path}: betas have shape {dset.shape}, expected {want} = (750 trials, Z, Y, X) for "
                                 f"ROI volumes of shape {spatial} (X, Y, Z); wrong subject, space or file?")
        if dset.dtype != np.int16:
            raise NSDFormatError(f"{path}: betas must be int16 (percent signal change x 300), got {dset.dtype}")
        out = np.empty((TRIALS_PER_SESSION, len(ijk)), dtype=np.float32)
        try:
            for z in np.unique(ijk[:, 2]):  # one z-slab of the voxels' (y, x) bounding box at a time
                sel = np.flatnonzero(ijk[:, 2] == z)
                ii, jj = ijk[sel, 0], ijk[sel, 1]
                slab = dset[:, int(z), jj.min():jj.max() + 1, ii.min():ii.max() + 1]
                out[:, sel] = slab[:, jj - jj.min(), ii - ii.min()]
        except (OSError, RuntimeError) as exc:
            raise NSDFormatError(f"reading the betas of session {session} ({path}) failed: {exc}. The file is "
                                 "probably truncated or corrupt: delete it and download it again.") from exc
    out /= BETA_SCALE
    return out


def _drop_columns(arr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the columns ``keep`` of a C-contiguous 2-D array inside its own buffer (no second full copy)."""
    if keep.all():
        return arr
    idx, flat = np.flatnonzero(keep), arr.reshape(-1)
    for r in range(arr.shape[0]):  # row r moves down to r * k <= r * n_cols: later rows are not overwritten
        flat[r * idx.size:(r + 1) * idx.size] = arr[r, idx]
    return flat[:arr.shape[0] * idx.size].reshape(arr.shape[0], idx.size)


def _features_for(features, image_ids: np.ndarray):
    """Rows of a features file (or an ``(ids, array)`` pair) for the given NSD ids, and its attributes."""
    if isinstance(features, (tuple, list)):
        ids, feats, attrs = np.asarray(features[0], dtype=np.int64), np.asarray(features[1], dtype=np.float32), {}
    else:
        ids, feats, attrs = load_features(features)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], image_ids), 0, len(ids) - 1)
    found = ids[order][pos] == image_ids
    if not found.all():
        missing = image_ids[~found]
        raise ConfigError(
            f"the features ({'given arrays' if isinstance(features, (tuple, list)) else features}) lack {missing.size} "
            f"of the {image_ids.size} images of this subject (first NSD ids: {missing[:5].tolist()}); extract "
            "features for the subject's images first (braincorl-lite extract-features --source nsd-hdf5 ... --subject N)")
    return feats[order[pos]], attrs


def prepare_subject(subject: int, features, out: Optional[Union[str, Path]] = None, *,
                    nsd_root: Optional[Union[str, Path]] = None, sessions=None, min_repeats: int = 1,
                    ncsnr: str = "computed", verify: bool = True, use_stim_info: bool = True,
                    progress: bool = True, voxels: str = "nsdgeneral") -> SubjectData:
    """Build the :class:`~braincorl_lite.data.SubjectData` of one NSD subject (1..8) from NSD's files.

    Parameters
    ----------
    features : path or (ids, array)
        Unit-norm image embeddings: a file of :func:`~braincorl_lite.nsd.save_features` (or
        ``.npz`` with ``image_ids`` and ``features``) or a pair of arrays, covering the subject's
        images (0-based NSD ids).
    out : path, optional
        Where to save the container (atomically).
    nsd_root : path, optional
        A local NSD copy with the bucket's layout; default: the cache (``$BRAINCORL_DATA/nsd``).
    sessions : None, str or sequence of int
        See :func:`~braincorl_lite.nsd.parse_sessions`; default: the public sessions.
    min_repeats : {1, 2, 3}
        Keep images shown at least this many times in those sessions.
    ncsnr : {"computed", "nsd"}
        Noise-ceiling SNR from those sessions, or NSD's ``ncsnr.nii.gz``.
    verify : bool
        Check the files' sha256 (manifest hash or first-download pin) before reading.
    use_stim_info : bool
        Cross-check ``nsd_stim_info_merged.csv`` when present, and keep its COCO ids.
    voxels : {"nsdgeneral", "higher-visual"}
        Which voxels to keep (``VOXEL_SETS``), recorded in ``meta["voxel_set"]``.

    Returns
    -------
    SubjectData
        Without ground truth, ``vertex`` -1 (volumetric); ``voxel_info``: ``ijk`` (n_voxels, 3),
        ``roi_nsd``, ``ncsnr``; ``image_info``: ``n_repeats`` (and ``coco_id``).

    Raises
    ------
    MissingDataError
        A required file is missing (the message gives the fetch command).
    NSDFormatError
        A file is truncated, corrupt, inconsistent with the others, or every voxel is flat.
    """
    from tqdm.auto import tqdm

    if min_repeats not in (1, 2, 3):
        raise ConfigError(f"min_repeats must be 1, 2 or 3, got {min_repeats}")
    if ncsnr not in ("computed", "nsd"):
        raise ConfigError(f"ncsnr must be 'computed' or 'nsd', got {ncsnr!r}")
    if voxels not in VOXEL_SETS:
        raise ConfigError(f"voxels must be one of {sorted(VOXEL_SETS)}, got {voxels!r}")
    sessions = parse_sessions(sessions, subject)
    paths = nsd_paths(subject, sessions, nsd_root=nsd_root, verify=verify)
    if ncsnr == "nsd" and paths["ncsnr"] is None:
        raise fetch.MissingDataError(f"--ncsnr nsd needs NSD's ncsnr.nii.gz for subject {subject}: "
                                     f"run `braincorl-lite fetch nsd --subject {subject} --what ncsnr`")
    design = read_design(paths["design"])
    if subject > design.subjectim.shape[0]:
        raise NSDFormatError(f"the design has {design.subjectim.shape[0]} subjects, not {subject}")
    if max(sessions) > design.n_sessions:
        raise NSDFormatError(f"the design describes {design.n_sessions} sessions; asked for {max(sessions)}")

    trial_ids = design.trial_image_ids(subject, sessions)  # (n_sessions, 750)
    uniq, counts = np.unique(trial_ids, return_counts=True)
    image_ids, n_rep = uniq[counts >= min_repeats], counts[counts >= min_repeats]
    if image_ids.size == 0:
        raise ConfigError(f"no image is shown {min_repeats} or more times in sessions {sessions}")
    row_of = np.full(N_NSD_IMAGES, -1, dtype=np.int64)
    row_of[image_ids] = np.arange(image_ids.size)
    trial_rows = row_of[trial_ids]
    feats, feat_attrs = _features_for(features, image_ids)

    mask, affine, ijk, fine, overlaps, n_general = _read_rois(paths, voxels)
    n_vox = len(ijk)
    log.info("subject %d: %d %s voxels, %d images, sessions %s", subject, n_vox, voxels, image_ids.size, sessions)
    betas = np.zeros((image_ids.size, n_vox), dtype=np.float32)  # sums of z-scored trials, then their means
    sumsq = np.zeros(n_vox, dtype=np.float64)
    bad = np.zeros(n_vox, dtype=bool)
    for k, session in enumerate(tqdm(sessions, desc=f"subj{subject:02d} sessions", disable=not progress)):
        block = _read_session(paths["betas"][session], session, ijk, mask.shape)
        block -= (block.sum(axis=0, dtype=np.float64) / block.shape[0]).astype(np.float32)  # in place
        sd = np.sqrt(np.einsum("ij,ij->j", block, block, dtype=np.float64) / block.shape[0])
        flat = ~(np.isfinite(sd) & (sd > 0))
        bad |= flat
        sd[flat] = 1.0
        block /= sd.astype(np.float32)
        block[:, flat] = 0.0
        use = trial_rows[k] >= 0
        block = block if use.all() else block[use]
        np.add.at(betas, trial_rows[k][use], block)
        sumsq += np.einsum("ij,ij->j", block, block, dtype=np.float64)
        del block
    betas /= n_rep[:, None].astype(np.float32)

    nsd_snr = None
    if paths["ncsnr"] is not None:
        try:
            vol, _ = _load_volume(paths["ncsnr"], "ncsnr")
            if vol.shape != mask.shape:
                raise NSDFormatError(f"{paths['ncsnr']}: shape {vol.shape} differs from nsdgeneral's {mask.shape}")
            nsd_snr = vol[mask]
        except NSDFormatError as exc:
            if ncsnr == "nsd":
                raise
            log.warning("could not compare with NSD's ncsnr: %s", exc)
    extra_meta = {}
    if ncsnr == "computed":
        df = float(np.sum(n_rep - 1))
        if df <= 0:
            raise ConfigError(f"no image is repeated within sessions {sessions}, so the noise ceiling cannot be "
                              "computed from the data: use more sessions or ncsnr='nsd'")
        between = np.einsum("i,ij,ij->j", n_rep.astype(np.float64), betas, betas, dtype=np.float64)
        noise_var = np.maximum((sumsq - between) / df, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.sqrt(np.maximum(0.0, 1.0 - noise_var)) / np.sqrt(noise_var)
        snr[noise_var == 0] = np.inf
        if nsd_snr is not None:
            ok = ~bad & np.isfinite(nsd_snr) & np.isfinite(snr)
            if ok.sum() > 2:
                extra_meta["ncsnr_corr_with_nsd"] = float(np.corrcoef(snr[ok], nsd_snr[ok])[0, 1])
    else:
        snr = nsd_snr
        bad |= ~np.isfinite(snr)
    nc = noise_ceiling_from_ncsnr(np.where(bad, 0.0, snr), n_rep)

    image_info = {"n_repeats": n_rep.astype(np.int64)}
    if use_stim_info and paths["stim_info"] is not None:
        info = read_stim_info(paths["stim_info"])
        check_stim_info(info, design, subject, paths["stim_info"])
        if not np.isin(image_ids, info.index.to_numpy()).all():
            raise NSDFormatError(f"{paths['stim_info']} lacks some of the subject's images")
        image_info["coco_id"] = info.loc[image_ids, "cocoId"].to_numpy(np.int64)

    n_bad = int(bad.sum())
    if n_bad == n_vox:
        raise NSDFormatError(
            f"subject {subject}: all {n_vox} voxels have constant (flat) or undefined betas in at least one of "
            f"sessions {sessions}, so nothing usable remains. The betas files are probably empty, zero-filled or "
            f"not NSD's (first: {paths['betas'][sessions[0]]}); delete them and download them again.")
    if n_bad:
        log.warning("subject %d: dropping %d of %d voxels with undefined values", subject, n_bad, n_vox)
    good = ~bad
    meta = {
        "dataset": "nsd", "subject": int(subject), "space": "func1pt8mm",
        "betas_version": "betas_fithrf_GLMdenoise_RR",
        "units": "single-trial betas z-scored per voxel within each session, averaged over repeats",
        "sessions": [int(s) for s in sessions], "min_repeats": int(min_repeats),
        "image_id_convention": "0-based NSD ids (row of imgBrick in nsd_stimuli.hdf5)",
        "volume_shape": [int(s) for s in mask.shape], "affine": np.round(affine, 6).tolist(),
        "roi_mapping": {**ROI_MAP, "any other fLoc label, or none": "other"}, "roi_overlaps": int(overlaps),
        "roi_food": "not available: NSD distributes no food ROI",
        "n_voxels_nsdgeneral": int(n_general), "voxel_set": {"name": voxels, **VOXEL_SETS[voxels], "n_voxels": int(n_vox)},
        "n_voxels_dropped_nan": n_bad, "dropped_voxel_ijk": ijk[bad].tolist(),
        "noise_ceiling": {"source": ncsnr, "mean_inv_n": float(np.mean(1.0 / n_rep)),
                          "formula": "ncsnr**2 / (ncsnr**2 + mean(1/n_i)); ncsnr = sqrt(max(0, 1 - s2))/sqrt(s2), "
                                     "s2 = pooled within-image variance of z-scored trials"},
        "features": {"source": "arrays" if isinstance(features, (tuple, list)) else str(features),
                     **{k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in feat_attrs.items()}},
        **extra_meta,
    }
    data = SubjectData(
        subject=f"subj{subject:02d}", features=feats, betas=_drop_columns(betas, good), image_ids=image_ids,
        shared_mask=np.isin(image_ids, design.sharedix),
        roi=np.array([ROI_MAP.get(f, "other") for f in fine[good]], dtype=str),
        vertex=np.full(int(good.sum()), -1, dtype=np.int64), noise_ceiling=nc[good], n_repeats=int(n_rep.max()),
        meta=meta, image_info=image_info,
        voxel_info={"ijk": ijk[good], "roi_nsd": np.where(fine[good] == "", "none", fine[good]), "ncsnr": snr[good]},
    )
    if out is not None:
        save_subject(data, out)
    return data
