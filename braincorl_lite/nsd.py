"""Prepare one real NSD subject into the common :class:`~braincorl_lite.data.SubjectData` container.

The Natural Scenes Dataset (NSD) is read in its own published formats:

* ``nsd_expdesign.mat`` (MATLAB v5, :func:`scipy.io.loadmat`): ``masterordering`` (1 x 30000,
  trial -> column of ``subjectim``, 1-based), ``subjectim`` (8 x 10000, NSD image ids, 1-based;
  the first 1000 columns are the shared images) and ``sharedix`` (1 x 1000, 1-based).
* single-trial betas, one HDF5 file per session
  (``nsddata_betas/ppdata/subjNN/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionSS.hdf5``),
  dataset ``betas``, int16, percent signal change multiplied by 300. NSD documents the array as
  X x Y x Z x 750 (MATLAB, column-major), so h5py sees it with the axes reversed:
  **(750, Z, Y, X)**, chunked one voxel (all 750 trials) per chunk. This module reads it that way
  and checks that ``shape[1:]`` is the reversed shape of the ROI volumes.
* ROI volumes (NIfTI, X x Y x Z) in ``nsddata/ppdata/subjNN/func1pt8mm/roi/``: ``nsdgeneral``
  (voxels > 0 are kept) and the fLoc ROIs ``floc-faces``, ``floc-places``, ``floc-bodies`` and
  ``floc-words`` (integer labels, see :data:`FLOC_LABELS`).

Processing (:func:`prepare_subject`), streaming one session at a time and reading only the
nsdgeneral voxels (one z-slab of their bounding box at a time):

1. betas / 300 -> percent signal change; z-score every voxel within each session over its 750
   trials (population sd); a voxel with zero or undefined variance in any session (e.g. at the
   edge of the imaged volume) is dropped and counted;
2. average the z-scored trials of each image over its repeats in the chosen sessions; images seen
   fewer than ``min_repeats`` times are dropped (default 1: every image shown at least once is
   kept, and the number of repeats of each image is recorded);
3. noise ceiling from the repeats, NSD's way: the noise variance is the pooled within-image
   variance of the z-scored trials (each image's sample variance, weighted by its degrees of
   freedom; with three repeats everywhere this is NSD's plain mean), the signal variance is
   ``max(0, 1 - noise variance)``, ``ncsnr = sqrt(signal var) / sqrt(noise var)``, and the noise
   ceiling of the averaged betas is ``ncsnr**2 / (ncsnr**2 + mean_i(1 / n_i))`` as a fraction
   (NSD's formula for a mixture of images averaged over n_i = 1, 2 or 3 trials; with n_i = n for
   all images it is ``ncsnr**2 / (ncsnr**2 + 1/n)``);
4. shared images are those in ``sharedix``; the others are the subject's unique images;
5. ROI labels: NSD's fLoc labels mapped to the package's names (:data:`ROI_MAP`), ``"other"``
   elsewhere. NSD has no food ROI, so no voxel is labelled food.

The voxels kept are those of ``nsdgeneral`` (default) or, with ``voxels="higher-visual"``, only
the nsdgeneral voxels inside one of the four fLoc ROI files (:data:`VOXEL_SETS`); ROI volumes
must hold integer labels. A subject whose every voxel is flat in some session is refused.

Peak memory is about one ``(n_images, n_voxels)`` float32 array (the result) plus one session of
the selected voxels (``750 x n_voxels`` float32) plus one z-slab; see
``benchmarks/prepare_nsd_memory.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from . import fetch
from .data import SubjectData, save_subject
from .errors import BraInCoRLError, ConfigError

__all__ = [
    "NSD_SESSIONS_COMPLETED",
    "NSD_PUBLIC_SESSIONS",
    "TRIALS_PER_SESSION",
    "BETA_SCALE",
    "FLOC_FILES",
    "FLOC_LABELS",
    "ROI_MAP",
    "VOXEL_SETS",
    "NSDFormatError",
    "NSDDesign",
    "read_design",
    "parse_sessions",
    "read_ctab",
    "read_stim_info",
    "nsd_paths",
    "noise_ceiling_from_ncsnr",
    "prepare_subject",
    "voxel_ijk",
]

log = logging.getLogger(__name__)

#: core NSD sessions each subject completed (NSD data manual, "Technical notes")
NSD_SESSIONS_COMPLETED = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
#: sessions of the original public release: the last three of each subject were held out
NSD_PUBLIC_SESSIONS = {s: n - 3 for s, n in NSD_SESSIONS_COMPLETED.items()}
TRIALS_PER_SESSION = 750
#: NSD stores betas as int16 percent signal change x 300
BETA_SCALE = 300.0
N_NSD_IMAGES = 73000

#: fLoc ROI files, in the order used to resolve a voxel labelled by more than one file
FLOC_FILES = ("floc-faces", "floc-places", "floc-bodies", "floc-words")
#: NSD's label numbering of the fLoc ROI volumes (as in the ``*.mgz.ctab`` label tables)
FLOC_LABELS = {
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
}
#: NSD fLoc label -> package ROI name; labels not listed (OWFA, mfs-words, mTL-*, aTL-faces) -> "other"
ROI_MAP = {
    "OFA": "OFA", "FFA-1": "FFA", "FFA-2": "FFA",
    "OPA": "OPA", "PPA": "PPA", "RSC": "RSC",
    "EBA": "EBA", "FBA-1": "FBA", "FBA-2": "FBA",
    "VWFA-1": "VWFA", "VWFA-2": "VWFA",
}
#: fLoc file -> category of the paper's per-category summaries
FLOC_CATEGORY = {"floc-faces": "faces", "floc-places": "places", "floc-bodies": "bodies", "floc-words": "words"}


#: voxel sets ``prepare_subject(voxels=...)`` can keep, with the definition recorded in the metadata
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


class NSDFormatError(BraInCoRLError, ValueError):
    """An NSD file is missing, truncated, or not in the expected format."""


# ---------------------------------------------------------------------- design
@dataclass
class NSDDesign:
    """NSD's experimental design, converted to 0-based indices.

    Attributes
    ----------
    masterordering : ndarray of int, shape (n_trials,)
        For each trial (all sessions in order), the 0-based column of ``subjectim``.
    subjectim : ndarray of int, shape (n_subjects, n_images_per_subject)
        0-based NSD image ids seen by each subject.
    sharedix : ndarray of int, shape (n_shared,)
        0-based ids of the shared images.
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray

    @property
    def n_sessions(self) -> int:
        """Number of sessions the design describes (30000 / 750 = 40 for NSD)."""
        return self.masterordering.size // TRIALS_PER_SESSION

    def trial_image_ids(self, subject: int, sessions: Sequence[int]) -> np.ndarray:
        """0-based NSD image id of every trial of ``sessions`` (in that order).

        Returns
        -------
        ndarray of int, shape (len(sessions), 750)
        """
        rows = []
        for s in sessions:
            if not 1 <= s <= self.n_sessions:
                raise ValueError(f"session {s} is outside the design's 1..{self.n_sessions}")
            t0 = (s - 1) * TRIALS_PER_SESSION
            rows.append(self.subjectim[subject - 1, self.masterordering[t0:t0 + TRIALS_PER_SESSION]])
        return np.stack(rows) if rows else np.zeros((0, TRIALS_PER_SESSION), dtype=np.int64)


def read_design(path: Union[str, Path]) -> NSDDesign:
    """Read ``nsd_expdesign.mat``.

    Parameters
    ----------
    path : path
        The MATLAB file.

    Returns
    -------
    NSDDesign
        With every index converted from NSD's 1-based convention to 0-based.

    Raises
    ------
    NSDFormatError
        Unreadable file, missing keys or values out of range.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise NSDFormatError(f"cannot read the NSD design {path}: {exc}") from exc
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise NSDFormatError(f"{path} lacks the key(s) {missing}: is it nsd_expdesign.mat?")
    mo = np.asarray(mat["masterordering"]).astype(np.int64).ravel()
    si = np.asarray(mat["subjectim"]).astype(np.int64)
    sh = np.asarray(mat["sharedix"]).astype(np.int64).ravel()
    if si.ndim != 2:
        raise NSDFormatError(f"{path}: subjectim must be 2-D (subjects x images), got shape {si.shape}")
    if mo.size == 0 or mo.size % TRIALS_PER_SESSION:
        raise NSDFormatError(f"{path}: masterordering has {mo.size} trials, not a multiple of {TRIALS_PER_SESSION}")
    if mo.min() < 1 or mo.max() > si.shape[1]:
        raise NSDFormatError(f"{path}: masterordering values must lie in 1..{si.shape[1]}")
    for name, arr in (("subjectim", si), ("sharedix", sh)):
        if arr.min() < 1 or arr.max() > N_NSD_IMAGES:
            raise NSDFormatError(f"{path}: {name} values must be 1-based NSD ids in 1..{N_NSD_IMAGES}")
    return NSDDesign(masterordering=mo - 1, subjectim=si - 1, sharedix=sh - 1)


def parse_sessions(spec: Union[None, str, int, Sequence[int]], subject: int) -> list:
    """Turn a session specification into a sorted list of session numbers.

    Parameters
    ----------
    spec : None, str, int or sequence of int
        ``None`` or ``"public"``: the sessions of the original public release
        (:data:`NSD_PUBLIC_SESSIONS`); ``"all"``: every completed session; ``"1-40"``,
        ``"1,3,5-7"``; or the numbers themselves.
    subject : int
        NSD subject (1..8), whose completed sessions bound the range.

    Returns
    -------
    list of int

    Examples
    --------
    >>> parse_sessions("1-3,5", subject=1)
    [1, 2, 3, 5]
    >>> len(parse_sessions(None, subject=4))
    27
    """
    if subject not in NSD_SESSIONS_COMPLETED:
        raise ConfigError(f"NSD subjects are 1..8, got {subject}")
    n = NSD_SESSIONS_COMPLETED[subject]
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "public"):
        return list(range(1, NSD_PUBLIC_SESSIONS[subject] + 1))
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(range(1, n + 1))
        out = set()
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if "-" in part:
                    lo, hi = (int(x) for x in part.split("-", 1))
                    if lo > hi:
                        raise ValueError
                    out.update(range(lo, hi + 1))
                else:
                    out.add(int(part))
            except ValueError:
                raise ConfigError(f"cannot read the session list {spec!r}: use e.g. '1-37', '1,3,5-7', 'all' or 'public'") from None
        values = sorted(out)
    elif isinstance(spec, (int, np.integer)):
        values = [int(spec)]
    else:
        values = sorted({int(s) for s in spec})
    if not values:
        raise ConfigError("the session list is empty")
    bad = [s for s in values if not 1 <= s <= n]
    if bad:
        raise ConfigError(f"subject {subject} completed sessions 1..{n}; {bad} do not exist")
    return values


def read_ctab(path: Union[str, Path]) -> dict:
    """Read a FreeSurfer-style label table (``value name ...`` per line).

    Returns
    -------
    dict
        ``{value: name}`` for values > 0.
    """
    out = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit() and int(parts[0]) > 0:
            out[int(parts[0])] = parts[1]
    return out


def read_stim_info(path: Union[str, Path]):
    """Read ``nsd_stim_info_merged.csv`` into a DataFrame indexed by the 0-based ``nsdId``.

    Only ``nsdId`` and ``cocoId`` are required; ``shared1000`` and ``subjectS_repR`` (1-based
    trial numbers, 0 when not shown) are used for consistency checks when present.
    """
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise NSDFormatError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in ("nsdId", "cocoId") if c not in df.columns]
    if missing:
        raise NSDFormatError(f"{path} lacks the column(s) {missing}: is it nsd_stim_info_merged.csv?")
    return df.set_index("nsdId", drop=False)


def _check_stim_info(info, design: NSDDesign, subject: int, path) -> None:
    """Cross-check the stimulus table against the design; raise on disagreement."""
    if "shared1000" in info.columns:
        flag = info["shared1000"].astype(str).str.lower().isin(["true", "1"])
        csv_shared = np.sort(info.index.to_numpy()[flag.to_numpy()])
        if not np.array_equal(csv_shared, np.sort(design.sharedix)):
            raise NSDFormatError(f"{path}: its shared1000 images differ from sharedix of the design")
    cols = [f"subject{subject}_rep{r}" for r in range(3)]
    if all(c in info.columns for c in cols):
        # trial numbers per image according to the design (1-based, all sessions)
        ids = design.subjectim[subject - 1, design.masterordering]
        trials_by_id = {}
        for t, img in enumerate(ids, start=1):
            trials_by_id.setdefault(int(img), []).append(t)
        sub = info.loc[info.index.isin(list(trials_by_id))]
        reps = sub[cols].to_numpy()
        for nsd_id, row in zip(sub.index.to_numpy(), reps):
            shown = sorted(int(v) for v in row if v > 0)
            if shown != trials_by_id[int(nsd_id)][: len(shown)]:
                raise NSDFormatError(
                    f"{path}: trials of image {nsd_id} for subject {subject} ({shown}) disagree with the design"
                )


# ---------------------------------------------------------------------- files
def nsd_paths(subject: int, sessions: Sequence[int], nsd_root: Optional[Union[str, Path]] = None,
              verify: bool = True, optional: bool = True) -> dict:
    """Local paths of the NSD files needed to prepare one subject.

    Parameters
    ----------
    subject : int
    sessions : sequence of int
    nsd_root : path, optional
        Root of a local NSD copy with the bucket's layout (``nsddata/``, ``nsddata_betas/``, ...).
        Default: the cache, ``$BRAINCORL_DATA/nsd``, where files are checked against their
        manifest hash or first-download pin (see :mod:`braincorl_lite.fetch`).
    verify : bool
        Check hashes (cache: manifest hash or pin; ``nsd_root``: manifest hashes only).
    optional : bool
        Also look for optional files (label tables, ncsnr, stimulus info); missing ones are
        reported as None.

    Returns
    -------
    dict
        Keys ``design``, ``nsdgeneral``, ``floc`` (dict), ``ctab`` (dict), ``betas`` (dict
        session -> path), ``ncsnr``, ``stim_info``.

    Raises
    ------
    braincorl_lite.fetch.MissingDataError
        A required file is missing, with the command that downloads it.
    """
    manifests = fetch.load_manifests()
    root = Path(nsd_root) if nsd_root is not None else None

    def resolve(name, required=True, **params):
        entry = fetch.get_entry(name, manifests, **params)
        if root is None:
            try:
                return fetch.locate(entry, download=False, verify=verify)
            except fetch.MissingDataError:
                if required:
                    raise
                return None
        path = root / entry.local
        if not path.exists():
            if not required:
                return None
            raise fetch.MissingDataError(
                f"{entry.label} is missing from the NSD copy at {root} (expected {path}); "
                f"download {entry.url} there, or fetch it into the cache with `{fetch.fetch_command(entry)}`."
            )
        if verify and entry.sha256:
            fetch.verify_file(entry, path, pin_if_unknown=False)
        return path

    out = {
        "design": resolve("nsd.expdesign"),
        "nsdgeneral": resolve("nsd.roi.nsdgeneral", subject=subject),
        "floc": {f: resolve(f"nsd.roi.{f}", subject=subject) for f in FLOC_FILES},
        "betas": {s: resolve("nsd.betas_session", subject=subject, session=s) for s in sessions},
        "ctab": {}, "ncsnr": None, "stim_info": None,
    }
    if optional:
        out["ctab"] = {f: resolve(f"nsd.ctab.{f}", required=False, subject=subject) for f in FLOC_FILES}
        out["ncsnr"] = resolve("nsd.ncsnr", required=False, subject=subject)
        out["stim_info"] = resolve("nsd.stim_info", required=False)
    return out


def _load_volume(path, what: str):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise NSDFormatError(f"cannot read the {what} volume {path}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NSDFormatError(f"{path}: the {what} volume must be 3-D (X, Y, Z), got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=float)


def _label_volume(path, what: str):
    """An ROI volume as integer labels (NaN -> 0); refuses non-integer values."""
    vol, affine = _load_volume(path, what)
    vol = np.asarray(vol, dtype=float)
    finite = vol[np.isfinite(vol)]
    odd = finite[finite != np.round(finite)]
    if odd.size:
        raise NSDFormatError(
            f"{path}: the {what} ROI volume holds {odd.size} non-integer value(s) (e.g. {odd[0]:g}); NSD's ROI "
            "files are integer label maps. Is it a probability map or a resampled (interpolated) copy? Use "
            "NSD's own func1pt8mm file."
        )
    return np.nan_to_num(vol).astype(np.int64), affine


def _read_rois(paths: dict, voxels: str = "nsdgeneral"):
    """Voxel mask, its affine, fine fLoc labels of the masked voxels, overlaps, nsdgeneral size."""
    general, affine = _label_volume(paths["nsdgeneral"], "nsdgeneral")
    mask = general > 0
    if not mask.any():
        raise NSDFormatError(f"{paths['nsdgeneral']}: the nsdgeneral mask has no voxel > 0")
    vols = {}
    for name in FLOC_FILES:
        vol, aff = _label_volume(paths["floc"][name], name)
        if vol.shape != mask.shape:
            raise NSDFormatError(
                f"{paths['floc'][name]}: shape {vol.shape} differs from nsdgeneral's {mask.shape}; "
                "the ROI files must come from the same subject and space (func1pt8mm)"
            )
        if not np.allclose(aff, affine, atol=1e-3):
            raise NSDFormatError(f"{paths['floc'][name]}: its affine differs from nsdgeneral's")
        vols[name] = vol
    n_general = int(mask.sum())
    if voxels == "higher-visual":
        mask &= np.logical_or.reduce([v > 0 for v in vols.values()])
        if not mask.any():
            raise NSDFormatError(f"no nsdgeneral voxel lies in any fLoc ROI ({', '.join(FLOC_FILES)}) of this subject")
    ijk = np.argwhere(mask)  # C order over (X, Y, Z)
    fine = np.full(len(ijk), "", dtype=object)
    overlaps = 0
    for name in FLOC_FILES:
        labels = dict(FLOC_LABELS[name])
        ctab_path = paths.get("ctab", {}).get(name)
        if ctab_path is not None:
            table = read_ctab(ctab_path)
            if table and table != labels:
                raise NSDFormatError(
                    f"{ctab_path}: label table {table} differs from the numbering this code assumes "
                    f"({labels}); update braincorl_lite.nsd.FLOC_LABELS"
                )
        values = vols[name][mask]
        for value in np.unique(values[values > 0]):
            if value not in labels:
                raise NSDFormatError(f"{paths['floc'][name]}: unknown label value {value} (known: {labels})")
            hit = values == value
            overlaps += int(np.sum(hit & (fine != "")))
            fine[hit & (fine == "")] = labels[value]
    return mask, affine, ijk, fine.astype(str), overlaps, n_general


def _open_betas(path, session: int, spatial_shape: tuple):
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise NSDFormatError(
            f"cannot open the betas of session {session} ({path}): {exc}. The file is probably "
            "truncated or corrupt: delete it and download it again."
        ) from exc
    if "betas" not in fh:
        found = list(fh.keys())
        fh.close()
        raise NSDFormatError(f"{path} has no dataset 'betas' (found {found})")
    dset = fh["betas"]
    want = (TRIALS_PER_SESSION,) + tuple(reversed(spatial_shape))
    if dset.shape != want:
        fh.close()
        raise NSDFormatError(
            f"{path}: betas have shape {dset.shape}, expected {want} = (750 trials, Z, Y, X) for ROI "
            f"volumes of shape {spatial_shape} (X, Y, Z); wrong subject, space or file?"
        )
    if dset.dtype != np.int16:
        fh.close()
        raise NSDFormatError(f"{path}: betas must be int16 (percent signal change x 300), got {dset.dtype}")
    return fh, dset


def _read_session(path, session: int, ijk: np.ndarray, spatial_shape: tuple) -> np.ndarray:
    """Betas of the selected voxels of one session, in percent signal change.

    Reads one z-slab of the voxels' (y, x) bounding box at a time.

    Returns
    -------
    ndarray, float32, shape (750, n_voxels)
    """
    fh, dset = _open_betas(path, session, spatial_shape)
    out = np.empty((TRIALS_PER_SESSION, len(ijk)), dtype=np.float32)
    try:
        with fh:
            for z in np.unique(ijk[:, 2]):
                sel = np.flatnonzero(ijk[:, 2] == z)
                ii, jj = ijk[sel, 0], ijk[sel, 1]
                x0, x1, y0, y1 = ii.min(), ii.max() + 1, jj.min(), jj.max() + 1
                slab = dset[:, int(z), y0:y1, x0:x1]  # (750, ny, nx)
                out[:, sel] = slab[:, jj - y0, ii - x0]
    except (OSError, RuntimeError) as exc:
        raise NSDFormatError(
            f"reading the betas of session {session} ({path}) failed: {exc}. The file is probably "
            "truncated or corrupt: delete it and download it again."
        ) from exc
    out /= BETA_SCALE
    return out


def noise_ceiling_from_ncsnr(ncsnr: np.ndarray, n_per_image) -> np.ndarray:
    """Noise ceiling (fraction) of betas averaged over repeats, from NSD's ncsnr.

    ``nc = ncsnr**2 / (ncsnr**2 + mean(1 / n_i))``, where ``n_i`` is the number of trials averaged
    for image i (NSD's formula; ``1/n`` when every image has ``n`` trials). Infinite ncsnr gives 1.

    Parameters
    ----------
    ncsnr : ndarray
        Noise-ceiling signal-to-noise ratio per voxel.
    n_per_image : int or array of int
        Trials averaged per image.

    Examples
    --------
    >>> float(noise_ceiling_from_ncsnr(np.array([1.0]), 3)[0])
    0.75
    """
    n = np.atleast_1d(np.asarray(n_per_image, dtype=float))
    if np.any(n < 1):
        raise ValueError("every image needs at least one trial")
    inv_n = float(np.mean(1.0 / n))
    s2 = np.asarray(ncsnr, dtype=float) ** 2
    with np.errstate(invalid="ignore"):
        nc = np.where(np.isinf(s2), 1.0, s2 / (s2 + inv_n))
    return nc


def _drop_columns_inplace(arr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Remove columns of a C-contiguous 2-D array without a second full-size copy.

    Rows are moved down inside the same buffer; the result is a contiguous view of its start.
    """
    n_rows, n_cols = arr.shape
    idx = np.flatnonzero(keep)
    if idx.size == n_cols:
        return arr
    flat = arr.reshape(-1)
    k = idx.size
    for r in range(n_rows):
        row = arr[r, idx].copy()
        flat[r * k:(r + 1) * k] = row
    return flat[: n_rows * k].reshape(n_rows, k)


def _load_features_for(features, image_ids: np.ndarray):
    """Rows of a features file (or an ``(ids, array)`` pair) for the given NSD ids."""
    from .features import load_features

    if isinstance(features, (tuple, list)) and len(features) == 2:
        ids, feats = np.asarray(features[0], dtype=np.int64), np.asarray(features[1], dtype=np.float32)
        attrs = {}
    else:
        ids, feats, attrs = load_features(features)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], image_ids)
    pos = np.clip(pos, 0, len(ids) - 1)
    found = ids[order][pos] == image_ids
    if not found.all():
        missing = image_ids[~found]
        raise ConfigError(
            f"the features ({features if not isinstance(features, tuple) else 'given arrays'}) lack "
            f"{missing.size} of the {image_ids.size} images of this subject (first NSD ids: "
            f"{missing[:5].tolist()}); extract features for the subject's images first "
            "(braincorl-lite extract-features --source nsd-hdf5 ... --subject N)"
        )
    return np.asarray(feats[order[pos]], dtype=np.float32), attrs


# ---------------------------------------------------------------------- main entry point
def prepare_subject(subject: int, features, out: Optional[Union[str, Path]] = None, *,
                    nsd_root: Optional[Union[str, Path]] = None, sessions=None, min_repeats: int = 1,
                    ncsnr: str = "computed", verify: bool = True, use_stim_info: bool = True,
                    progress: bool = True, voxels: str = "nsdgeneral") -> SubjectData:
    """Build the :class:`~braincorl_lite.data.SubjectData` of one NSD subject from NSD's files.

    Parameters
    ----------
    subject : int
        NSD subject, 1..8 (the paper uses 1, 2, 5 and 7).
    features : path or (ids, array)
        Image embeddings: a file written by :mod:`braincorl_lite.features` (HDF5 or ``.npz``
        with ``image_ids`` (0-based NSD ids) and unit-norm ``features``), or a pair of arrays.
    out : path, optional
        Where to save the container (:func:`~braincorl_lite.data.save_subject`; written to a
        temporary file and renamed, so a failure leaves nothing behind).
    nsd_root : path, optional
        A local NSD copy with the bucket's layout; default: the cache (``$BRAINCORL_DATA/nsd``).
    sessions : None, str or sequence of int
        Sessions to use (see :func:`parse_sessions`); default: the public sessions.
    min_repeats : {1, 2, 3}
        Keep images shown at least this many times in the chosen sessions.
    ncsnr : {"computed", "nsd"}
        Noise-ceiling SNR from the chosen sessions (default) or from NSD's ``ncsnr.nii.gz``.
    verify : bool
        Check file hashes (manifest hash or first-download pin) before reading.
    use_stim_info : bool
        When ``nsd_stim_info_merged.csv`` is available, cross-check it against the design and
        record the COCO id of every image in ``meta["coco_ids"]``.
    progress : bool
        Show a progress bar over sessions.
    voxels : {"nsdgeneral", "higher-visual"}
        Which voxels to keep (see :data:`VOXEL_SETS`): all of NSD's ``nsdgeneral`` mask (default),
        or only its voxels inside one of NSD's fLoc ROIs (faces, bodies, places, words), closer to
        the paper's higher visual cortex. The choice, its definition and its source are recorded
        in ``meta["voxel_set"]``.

    Returns
    -------
    SubjectData
        ``truth=None``, ``vertex=-1`` for all voxels (volumetric data), ``meta`` with at least
        ``dataset="nsd"``, ``subject``, ``space="func1pt8mm"`` and ``voxel_ijk`` (one ``[i, j, k]``
        per voxel, indices into the func1pt8mm volume; see :func:`voxel_ijk`).

    Raises
    ------
    braincorl_lite.fetch.MissingDataError
        A required file is missing (the message says how to fetch it).
    NSDFormatError
        A file is truncated, corrupt or inconsistent with the others, or every voxel's betas are
        constant (nothing usable would be written).
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
        raise fetch.MissingDataError(
            f"--ncsnr nsd needs NSD's ncsnr.nii.gz for subject {subject}: "
            f"run `braincorl-lite fetch nsd --subject {subject} --what ncsnr`"
        )
    design = read_design(paths["design"])
    if subject > design.subjectim.shape[0]:
        raise NSDFormatError(f"the design has {design.subjectim.shape[0]} subjects, not {subject}")
    if max(sessions) > design.n_sessions:
        raise NSDFormatError(f"the design describes {design.n_sessions} sessions; asked for {max(sessions)}")

    # which images, how many repeats, which row each trial adds to
    trial_ids = design.trial_image_ids(subject, sessions)  # (n_sessions, 750)
    uniq, counts = np.unique(trial_ids, return_counts=True)
    kept = counts >= min_repeats
    image_ids, n_rep = uniq[kept], counts[kept]
    if image_ids.size == 0:
        raise ConfigError(f"no image is shown {min_repeats} or more times in sessions {sessions}")
    row_of = np.full(N_NSD_IMAGES, -1, dtype=np.int64)
    row_of[image_ids] = np.arange(image_ids.size)
    trial_rows = row_of[trial_ids]
    shared_mask = np.isin(image_ids, design.sharedix)

    feats, feat_attrs = _load_features_for(features, image_ids)

    mask, affine, ijk, fine, overlaps, n_general = _read_rois(paths, voxels)
    spatial = mask.shape
    n_vox = len(ijk)
    log.info("subject %d: %d %s voxels, %d images (%d shared), sessions %s",
             subject, n_vox, voxels, image_ids.size, shared_mask.sum(), sessions)

    acc = np.zeros((image_ids.size, n_vox), dtype=np.float32)  # sums of z-scored trials
    sumsq = np.zeros(n_vox, dtype=np.float64)                  # sum of squares over kept trials
    bad = np.zeros(n_vox, dtype=bool)
    for k, session in enumerate(tqdm(sessions, desc=f"subj{subject:02d} sessions", disable=not progress)):
        block = _read_session(paths["betas"][session], session, ijk, spatial)
        # z-score in place; float64 accumulation without full-size float64 temporaries
        mean = block.sum(axis=0, dtype=np.float64) / block.shape[0]
        block -= mean.astype(np.float32)
        sd = np.sqrt(np.einsum("ij,ij->j", block, block, dtype=np.float64) / block.shape[0])
        bad_now = ~(np.isfinite(sd) & (sd > 0))
        bad |= bad_now
        sd[bad_now] = 1.0
        block /= sd.astype(np.float32)
        block[:, bad_now] = 0.0
        rows = trial_rows[k]
        use = rows >= 0
        kept_block = block if use.all() else block[use]
        np.add.at(acc, rows[use], kept_block)
        sumsq += np.einsum("ij,ij->j", kept_block, kept_block, dtype=np.float64)
        del block, kept_block

    acc /= n_rep[:, None].astype(np.float32)  # now the averaged betas
    betas = acc

    # noise ceiling
    if ncsnr == "computed":
        df = float(np.sum(n_rep - 1))
        if df <= 0:
            raise ConfigError(
                f"no image is repeated within sessions {sessions}, so the noise ceiling cannot be "
                "computed from the data: use more sessions or ncsnr='nsd'"
            )
        between = np.einsum("i,ij,ij->j", n_rep.astype(np.float64), betas, betas, dtype=np.float64)
        noise_var = np.maximum((sumsq - between) / df, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.sqrt(np.maximum(0.0, 1.0 - noise_var)) / np.sqrt(noise_var)
        snr[noise_var == 0] = np.inf
    else:
        vol, aff = _load_volume(paths["ncsnr"], "ncsnr")
        if vol.shape != spatial:
            raise NSDFormatError(f"{paths['ncsnr']}: shape {vol.shape} differs from nsdgeneral's {spatial}")
        snr = np.asarray(vol, dtype=float)[mask]
        bad |= ~np.isfinite(snr)
    nc = noise_ceiling_from_ncsnr(np.where(bad, 0.0, snr), n_rep)

    extra_meta = {}
    if ncsnr == "computed" and paths.get("ncsnr") is not None:
        try:
            vol, _ = _load_volume(paths["ncsnr"], "ncsnr")
            if vol.shape == spatial:
                theirs = np.asarray(vol, dtype=float)[mask]
                ok = ~bad & np.isfinite(theirs) & np.isfinite(snr)
                if ok.sum() > 2:
                    extra_meta["ncsnr_corr_with_nsd"] = float(np.corrcoef(snr[ok], theirs[ok])[0, 1])
        except NSDFormatError as exc:
            log.warning("could not compare with NSD's ncsnr: %s", exc)

    coco_ids = None
    if use_stim_info and paths.get("stim_info") is not None:
        info = read_stim_info(paths["stim_info"])
        _check_stim_info(info, design, subject, paths["stim_info"])
        if not np.isin(image_ids, info.index.to_numpy()).all():
            raise NSDFormatError(f"{paths['stim_info']} lacks some of the subject's images")
        coco_ids = info.loc[image_ids, "cocoId"].astype(np.int64).tolist()

    n_bad = int(bad.sum())
    if n_bad == n_vox:
        raise NSDFormatError(
            f"subject {subject}: all {n_vox} voxels have constant (flat) or undefined betas in at least one of "
            f"sessions {sessions}, so nothing usable remains. The betas files are probably empty, zero-filled "
            f"or not NSD's (first: {paths['betas'][sessions[0]]}); delete them and download them again."
        )
    if n_bad:
        log.warning("subject %d: dropping %d of %d voxels with undefined (NaN) values", subject, n_bad, n_vox)
    good = ~bad
    dropped_ijk = ijk[bad].tolist()
    betas = _drop_columns_inplace(betas, good)
    ijk, fine, nc, snr = ijk[good], fine[good], nc[good], snr[good]

    roi = np.array([ROI_MAP.get(f, "other") for f in fine], dtype=object).astype(str)
    meta = {
        "dataset": "nsd",
        "subject": int(subject),
        "space": "func1pt8mm",
        "betas_version": "betas_fithrf_GLMdenoise_RR",
        "units": "single-trial betas z-scored per voxel within each session, averaged over repeats",
        "sessions": [int(s) for s in sessions],
        "min_repeats": int(min_repeats),
        "repeats_per_image": n_rep.astype(int).tolist(),
        "image_id_convention": "0-based NSD ids (row of imgBrick in nsd_stimuli.hdf5)",
        "voxel_ijk": ijk.astype(int).tolist(),
        "volume_shape": [int(s) for s in spatial],
        "affine": np.round(affine, 6).tolist(),
        "roi_nsd": [f if f else "none" for f in fine.tolist()],
        "roi_mapping": {**ROI_MAP, "any other fLoc label, or none": "other"},
        "roi_overlaps": int(overlaps),
        "roi_food": "not available: NSD distributes no food ROI",
        "n_voxels_nsdgeneral": int(n_general),
        "voxel_set": {"name": voxels, **VOXEL_SETS[voxels], "n_voxels": int(n_vox)},
        "n_voxels_dropped_nan": n_bad,
        "dropped_voxel_ijk": dropped_ijk,
        "noise_ceiling": {
            "source": ncsnr,
            "formula": "ncsnr**2 / (ncsnr**2 + mean(1/n_i)); ncsnr = sqrt(max(0, 1 - s2))/sqrt(s2), "
                       "s2 = pooled within-image variance of z-scored trials",
            "mean_inv_n": float(np.mean(1.0 / n_rep)),
        },
        "ncsnr": [float(x) if np.isfinite(x) else None for x in snr],
        "features": {
            "source": str(features) if not isinstance(features, (tuple, list)) else "arrays",
            **{k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in feat_attrs.items()},
        },
        **extra_meta,
    }
    if coco_ids is not None:
        meta["coco_ids"] = coco_ids
    data = SubjectData(
        subject=f"subj{subject:02d}",
        features=feats,
        betas=betas,
        image_ids=image_ids,
        shared_mask=shared_mask,
        roi=roi,
        vertex=np.full(ijk.shape[0], -1, dtype=np.int64),
        noise_ceiling=nc.astype(np.float32),
        n_repeats=int(n_rep.max()),
        captions=None,
        truth=None,
        meta=meta,
    )
    if out is not None:
        save_subject(data, out)
    return data


def voxel_ijk(data: SubjectData) -> np.ndarray:
    """The ``(n_voxels, 3)`` func1pt8mm voxel indices of a prepared NSD container.

    Raises
    ------
    ValueError
        If the container has no ``voxel_ijk`` or it no longer matches the voxels (for instance
        after :meth:`SubjectData.select_voxels`, which copies ``meta`` unchanged).
    """
    ijk = data.meta.get("voxel_ijk")
    if ijk is None:
        raise ValueError(f"{data.subject} has no meta['voxel_ijk'] (not prepared from NSD volumes?)")
    arr = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
    if arr.shape[0] != data.n_voxels:
        raise ValueError(
            f"meta['voxel_ijk'] has {arr.shape[0]} rows but the container has {data.n_voxels} voxels "
            "(voxels were selected after preparation); keep the indices of the selection yourself"
        )
    return arr
