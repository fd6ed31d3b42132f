"""Peak memory of ``prepare-nsd`` on an NSD-sized test tree.

Generates, in NSD's formats, a subject with a realistic func1pt8mm volume (81 x 104 x 83, as NSD
subject 1), an nsdgeneral mask of about 15,000 voxels, fLoc ROIs, 750-trial int16 session betas
(HDF5 dataset ``betas``, shape (750, Z, Y, X), one chunk per voxel, as NSD's files) and 512-d
unit-norm features, then runs :func:`braincorl_lite.nsd.prepare_subject` in a child process and
reports its peak resident memory (``resource.getrusage(...).ru_maxrss``, compared with the resident
size after the imports) and the peak of Python/numpy allocations (``tracemalloc``).

Betas are written only inside the bounding box of the mask (the rest of the dataset stays
unallocated and reads as zeros), which keeps the files small; the reader reads exactly the same
slabs as it would from NSD's files.

Usage::

    python benchmarks/prepare_nsd_memory.py                 # 3 sessions
    python benchmarks/prepare_nsd_memory.py --sessions 10 --voxels 15000

Uses NSD's real ``nsd_expdesign.mat`` when it is found at ../shared/nsd_format/ (next to the
repository), otherwise a synthetic design with the same shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REAL_DESIGN = REPO.parent / "shared" / "nsd_format" / "nsd_expdesign.mat"
SHAPE = (81, 104, 83)  # NSD subject 1, func1pt8mm (X, Y, Z)
AFFINE = np.array([[-1.8, 0, 0, 72.0], [0, 1.8, 0, -93.6], [0, 0, 1.8, -55.8], [0, 0, 0, 1]])


def _local(name, **params):
    from braincorl_lite.nsd import fetch

    return fetch.get_entry(name, **params).local


def _write_nifti(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


def _design(path: Path, rng) -> dict:
    from scipy.io import loadmat, savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    if REAL_DESIGN.exists():
        path.write_bytes(REAL_DESIGN.read_bytes())
        return loadmat(str(path))
    perm = rng.permutation(73000) + 1
    shared = np.sort(perm[:1000])
    subjectim = np.stack([np.r_[shared, perm[1000 + s * 9000: 1000 + (s + 1) * 9000]] for s in range(8)])
    mo = rng.permutation(np.repeat(np.arange(1, 10001), 3)).astype(np.uint16)
    d = {"masterordering": mo[None], "subjectim": subjectim.astype(np.int32), "sharedix": shared[None].astype(np.int32)}
    savemat(str(path), d)
    return d


def make_tree(root: Path, n_sessions: int, n_voxels: int, seed: int = 0) -> dict:
    """Write the NSD-sized test tree; returns a summary."""
    import h5py

    from braincorl_lite.nsd.design import FLOC_FILES
    from braincorl_lite.nsd.features import save_features

    rng = np.random.default_rng(seed)
    design = _design(root / _local("nsd.expdesign"), rng)
    X, Y, Z = SHAPE
    # nsdgeneral: an ellipsoid in posterior cortex with about n_voxels voxels
    ii, jj, kk = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    centre = np.array([X / 2, Y * 0.3, Z * 0.45])
    axes = np.array([1.6, 1.0, 0.8])
    r = ((ii - centre[0]) / axes[0]) ** 2 + ((jj - centre[1]) / axes[1]) ** 2 + ((kk - centre[2]) / axes[2]) ** 2
    radius2 = np.sort(r.ravel())[n_voxels - 1]
    general = np.where(r <= radius2, 1, 0).astype(np.int16)
    general[r > radius2 * 4] = -1
    mask = general > 0
    _write_nifti(root / _local("nsd.roi.nsdgeneral", subject=1), general)
    ijk = np.argwhere(mask)
    for f_i, name in enumerate(FLOC_FILES):
        vol = np.zeros(SHAPE, dtype=np.int16)
        for label in (1, 2, 3):
            c = ijk[rng.integers(len(ijk))]
            d2 = ((ijk - c) ** 2).sum(axis=1)
            sel = ijk[d2 <= 4]
            vol[sel[:, 0], sel[:, 1], sel[:, 2]] = label
        _write_nifti(root / _local(f"nsd.roi.{name}", subject=1), vol)
    x0, y0, z0 = ijk.min(axis=0)
    x1, y1, z1 = ijk.max(axis=0) + 1
    for s in range(1, n_sessions + 1):
        path = root / _local("nsd.betas_session", subject=1, session=s)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as fh:
            dset = fh.create_dataset("betas", shape=(750, Z, Y, X), dtype=np.int16, chunks=(750, 1, 1, 1))
            for z in range(z0, z1):  # one z-slab at a time to keep the generator small too
                block = rng.normal(0, 2.0, size=(750, y1 - y0, x1 - x0)) * 300
                dset[:, z, y0:y1, x0:x1] = np.clip(block, -32768, 32767).astype(np.int16)
    ids = np.unique(np.asarray(design["subjectim"])[0] - 1)
    feats = rng.normal(size=(ids.size, 512)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    features = save_features(root / "features.h5", ids, feats, attrs={"model": "random", "pretrained": "none"})
    return {"features": str(features), "n_voxels_mask": int(mask.sum()), "bbox": [int(v) for v in (x1 - x0, y1 - y0, z1 - z0)],
            "design": "NSD's nsd_expdesign.mat" if REAL_DESIGN.exists() else "synthetic (same shapes)"}


def _proc_status_mb(key: str):
    """VmRSS / VmHWM of this process in MiB from /proc (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(root: str, features: str, n_sessions: int) -> None:
    """Run prepare in this process and print the memory figures as JSON."""
    import tracemalloc

    from braincorl_lite.nsd import prepare_subject

    import h5py  # noqa: F401  (imports first, so that the baseline includes them)
    import nibabel  # noqa: F401
    import pandas  # noqa: F401
    import scipy.io  # noqa: F401

    base_rss = _proc_status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    data = prepare_subject(1, features, Path(root) / "subj01.npz", nsd_root=root, sessions=list(range(1, n_sessions + 1)),
                           verify=False, progress=False)
    elapsed = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({
        "n_images": data.n_images, "n_voxels": data.n_voxels, "seconds": elapsed,
        "baseline_rss_mb": base_rss, "peak_rss_mb": peak_rss,
        "tracemalloc_peak_mb": traced_peak / 2**20,
        "betas_mb": data.betas.nbytes / 2**20, "session_block_mb": 750 * data.n_voxels * 4 / 2**20,
    }))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=3, help="number of 750-trial sessions (default 3)")
    ap.add_argument("--voxels", type=int, default=15000, help="nsdgeneral voxels (default 15000)")
    ap.add_argument("--dir", help="where to write the tree (default: a temporary folder, removed after)")
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "FEATURES", "SESSIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        t0 = time.perf_counter()
        info = make_tree(root, args.sessions, args.voxels)
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
        print(f"test tree: volume {SHAPE}, nsdgeneral {info['n_voxels_mask']} voxels (bounding box {info['bbox']}), "
              f"{args.sessions} sessions x 750 trials, design: {info['design']}; {disk:.0f} MiB on disk; "
              f"written in {time.perf_counter() - t0:.1f} s")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run([sys.executable, __file__, "--child", str(root), info["features"], str(args.sessions)],
                             capture_output=True, text=True, env=env)
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        r = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"prepare-nsd: {r['n_images']} images x {r['n_voxels']} voxels in {r['seconds']:.1f} s")
    print(f"  peak RSS            {r['peak_rss_mb']:8.1f} MiB  (resident after imports: {r['baseline_rss_mb']:.1f} MiB; "
          f"increase {r['peak_rss_mb'] - r['baseline_rss_mb']:.1f} MiB)")
    print(f"  tracemalloc peak    {r['tracemalloc_peak_mb']:8.1f} MiB  (numpy/Python allocations)")
    print(f"  result betas        {r['betas_mb']:8.1f} MiB  (n_images x n_voxels float32)")
    print(f"  one session block   {r['session_block_mb']:8.1f} MiB  (750 x n_voxels float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
