"""NSD's experimental design, sessions, stimulus table and ROI label tables, in NSD's own formats.

``nsd_expdesign.mat`` (MATLAB v5) holds ``masterordering`` (1 x 30000, trial -> column of
``subjectim``), ``subjectim`` (8 x 10000 NSD image ids; the first 1000 columns are the shared
images) and ``sharedix`` (1 x 1000), all 1-based; :func:`read_design` converts them to 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ..errors import BraInCoRLError, ConfigError

#: core NSD sessions each subject completed (NSD data manual, "Technical notes")
NSD_SESSIONS_COMPLETED = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
#: sessions of the original public release (the last three of each subject were held out)
NSD_PUBLIC_SESSIONS = {s: n - 3 for s, n in NSD_SESSIONS_COMPLETED.items()}
TRIALS_PER_SESSION = 750
BETA_SCALE = 300.0  #: NSD stores betas as int16 percent signal change x 300
N_NSD_IMAGES = 73000

#: fLoc ROI files, in the order that resolves a voxel labelled by more than one file
FLOC_FILES = ("floc-faces", "floc-places", "floc-bodies", "floc-words")
#: NSD's label numbering of the fLoc ROI volumes (as in the ``*.mgz.ctab`` label tables)
FLOC_LABELS = {
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
}
#: NSD fLoc label -> ROI name of :data:`braincorl_lite.cortex.ROIS`; any other label -> "other"
ROI_MAP = {"OFA": "OFA", "FFA-1": "FFA", "FFA-2": "FFA", "OPA": "OPA", "PPA": "PPA", "RSC": "RSC",
           "EBA": "EBA", "FBA-1": "FBA", "FBA-2": "FBA", "VWFA-1": "VWFA", "VWFA-2": "VWFA"}


class NSDFormatError(BraInCoRLError, ValueError):
    """An NSD file is missing, truncated, or not in the expected format."""


@dataclass
class NSDDesign:
    """NSD's design with 0-based indices: ``masterordering`` (n_trials,), ``subjectim``
    (n_subjects, n_images_per_subject) NSD ids, ``sharedix`` (n_shared,) NSD ids."""

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray

    @property
    def n_sessions(self) -> int:
        return self.masterordering.size // TRIALS_PER_SESSION

    def trial_image_ids(self, subject: int, sessions: Sequence[int]) -> np.ndarray:
        """0-based NSD id of every trial of ``sessions`` (1-based), shape (len(sessions), 750)."""
        rows = []
        for s in sessions:
            if not 1 <= s <= self.n_sessions:
                raise ValueError(f"session {s} is outside the design's 1..{self.n_sessions}")
            t0 = (s - 1) * TRIALS_PER_SESSION
            rows.append(self.subjectim[subject - 1, self.masterordering[t0:t0 + TRIALS_PER_SESSION]])
        return np.stack(rows) if rows else np.zeros((0, TRIALS_PER_SESSION), dtype=np.int64)


def read_design(path: Union[str, Path]) -> NSDDesign:
    """Read ``nsd_expdesign.mat`` (raises :class:`NSDFormatError` for another or a broken file)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise NSDFormatError(f"cannot read the NSD design {path}: {exc}") from exc
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise NSDFormatError(f"{path} lacks the key(s) {missing}: is it nsd_expdesign.mat?")
    mo, si, sh = (np.asarray(mat[k]).astype(np.int64) for k in ("masterordering", "subjectim", "sharedix"))
    mo, sh = mo.ravel(), sh.ravel()
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


def open_hdf5(path, key: str, what: str):
    """Open an NSD HDF5 file and its dataset ``key`` as ``(file, dataset)``; :class:`NSDFormatError`
    for a truncated file or another one (close the file, e.g. ``with file:``)."""
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise NSDFormatError(f"cannot open the {what} ({path}): {exc}. The file is probably truncated or corrupt: "
                             "delete it and download it again.") from exc
    if key not in fh:
        found = list(fh.keys())
        fh.close()
        raise NSDFormatError(f"{path} has no dataset {key!r} (found {found})")
    return fh, fh[key]


def subject_image_ids(design: Union[str, Path], subject: int) -> np.ndarray:
    """Sorted 0-based NSD ids of the 10,000 images of one subject (1..8)."""
    d = read_design(design)
    if not 1 <= subject <= d.subjectim.shape[0]:
        raise ValueError(f"subject must be 1..{d.subjectim.shape[0]}, got {subject}")
    return np.unique(d.subjectim[subject - 1])


def parse_sessions(spec: Union[None, str, int, Sequence[int]], subject: int) -> list:
    """Sorted session numbers from ``None``/``"public"`` (the public release), ``"all"``,
    ``"1-3,5"`` or the numbers themselves, bounded by the sessions ``subject`` completed.

    >>> parse_sessions("1-3,5", subject=1)
    [1, 2, 3, 5]
    >>> len(parse_sessions(None, subject=4))
    27
    """
    if subject not in NSD_SESSIONS_COMPLETED:
        raise ConfigError(f"NSD subjects are 1..8, got {subject}")
    n = NSD_SESSIONS_COMPLETED[subject]
    text = spec.strip().lower() if isinstance(spec, str) else None
    if spec is None or text == "public":
        return list(range(1, NSD_PUBLIC_SESSIONS[subject] + 1))
    if text == "all":
        return list(range(1, n + 1))
    if text is not None:
        values = set()
        try:
            for part in filter(None, text.replace(" ", "").split(",")):
                lo, _, hi = part.partition("-")
                if int(lo) > int(hi or lo):
                    raise ValueError
                values.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ConfigError(f"cannot read the session list {spec!r}: use e.g. '1-37', '1,3,5-7', 'all' or 'public'") from None
    else:
        values = {int(spec)} if isinstance(spec, (int, np.integer)) else {int(s) for s in spec}
    if not values:
        raise ConfigError("the session list is empty")
    bad = [s for s in sorted(values) if not 1 <= s <= n]
    if bad:
        raise ConfigError(f"subject {subject} completed sessions 1..{n}; {bad} do not exist")
    return sorted(values)


def read_ctab(path: Union[str, Path]) -> dict:
    """A FreeSurfer label table (``value name ...`` per line) as ``{value: name}`` for values > 0."""
    rows = (line.split() for line in Path(path).read_text().splitlines())
    return {int(p[0]): p[1] for p in rows if len(p) >= 2 and p[0].lstrip("-").isdigit() and int(p[0]) > 0}


def read_stim_info(path: Union[str, Path]):
    """``nsd_stim_info_merged.csv`` as a DataFrame indexed by the 0-based ``nsdId``."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise NSDFormatError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in ("nsdId", "cocoId") if c not in df.columns]
    if missing:
        raise NSDFormatError(f"{path} lacks the column(s) {missing}: is it nsd_stim_info_merged.csv?")
    return df.set_index("nsdId", drop=False)


def check_stim_info(info, design: NSDDesign, subject: int, path) -> None:
    """Cross-check the stimulus table (shared images, trials of each image) against the design."""
    if "shared1000" in info.columns:
        flag = info["shared1000"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
        if not np.array_equal(np.sort(info.index.to_numpy()[flag]), np.sort(design.sharedix)):
            raise NSDFormatError(f"{path}: its shared1000 images differ from sharedix of the design")
    cols = [f"subject{subject}_rep{r}" for r in range(3)]
    if not all(c in info.columns for c in cols):
        return
    trials_by_id = {}  # 1-based trial numbers of each image according to the design
    for t, img in enumerate(design.subjectim[subject - 1, design.masterordering], start=1):
        trials_by_id.setdefault(int(img), []).append(t)
    sub = info.loc[info.index.isin(list(trials_by_id))]
    for nsd_id, row in zip(sub.index.to_numpy(), sub[cols].to_numpy()):
        shown = sorted(int(v) for v in row if v > 0)
        if shown != trials_by_id[int(nsd_id)][:len(shown)]:
            raise NSDFormatError(f"{path}: trials of image {nsd_id} for subject {subject} ({shown}) disagree with the design")
