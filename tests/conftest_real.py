"""Helpers and fixtures for the real-data tests: tiny files in NSD's exact formats, a local HTTP
server on 127.0.0.1, and tiny encoders. Loaded as a pytest plugin (``pytest_plugins`` in
``tests/conftest.py``), so its fixtures need no import; helpers are imported, e.g.
``from conftest_real import make_nsd_tree``.

Nothing here reaches the network: the only server is a thread serving bytes from memory on the
loopback interface.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from braincorl_lite.nsd import fetch
from braincorl_lite.nsd.design import FLOC_FILES, FLOC_LABELS, TRIALS_PER_SESSION

SHARED_DESIGN = Path(__file__).resolve().parents[1].parent / "shared" / "nsd_format" / "nsd_expdesign.mat"

# func1pt8mm-like affine: 1.8 mm voxels, axes flipped the way scanner-space volumes often are
REAL_LIKE_AFFINE = np.array([
    [-1.8, 0.0, 0.0, 72.0],
    [0.0, 1.8, 0.0, -93.6],
    [0.0, 0.0, 1.8, -55.8],
    [0.0, 0.0, 0.0, 1.0],
])


# ---------------------------------------------------------------------- local HTTP server
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _serve(self, head: bool):
        srv = self.server
        srv.log.append({"path": self.path, "range": self.headers.get("Range")})
        if srv.fail_next > 0:
            srv.fail_next -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and srv.ranges:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if srv.stall_after is not None:  # send a little, then hang (the client gets killed meanwhile)
            self.wfile.write(body[:srv.stall_after])
            self.wfile.flush()
            deadline = time.monotonic() + 30
            while srv.stall_after is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            self.close_connection = True
            return
        self.wfile.write(body)

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)


class LocalServer(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (random free port) serving ``files`` (path -> bytes).

    Attributes
    ----------
    log : list of dict
        One record per request (path, Range header).
    fail_next : int
        Answer the next N requests with 503.
    ranges : bool
        Honour ``Range: bytes=N-`` requests.
    stall_after : int or None
        Send only this many bytes of a body, then hang (until set back to None, or 30 s).
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict = {}
        self.log: list = []
        self.fail_next = 0
        self.ranges = True
        self.stall_after = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def local_server():
    srv = LocalServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stall_after = None
        srv.shutdown()
        srv.server_close()


def make_entry(url: str, local: str = "test/file.bin", sha256=None, size_bytes=None, optional=False) -> fetch.Entry:
    """A manifest entry pointing at a test URL."""
    return fetch.Entry(
        name="test.file", group="design", url=url, local=local, sha256=sha256, size_bytes=size_bytes,
        licence="test data", description="test file", manifest="test", cache_subdir="test", optional=optional,
    )


# ---------------------------------------------------------------------- tiny NSD tree
def make_design(path: Path, seed: int = 0) -> dict:
    """Write an ``nsd_expdesign.mat`` with NSD's keys, shapes and dtypes.

    The first three sessions (2,250 trials) show 300 images three times, 450 twice and 450 once
    (a third of each group being shared images); the remaining 37 sessions complete three
    presentations of every one of the 10,000 images, as in NSD.

    Returns
    -------
    dict
        The 1-based arrays written (``masterordering`` (1, 30000) uint16, ``subjectim``
        (8, 10000) int32, ``sharedix`` (1, 1000) int32).
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    perm = rng.permutation(73000) + 1
    shared = np.sort(perm[:1000])
    subjectim = np.empty((8, 10000), dtype=np.int32)
    for s in range(8):
        subjectim[s, :1000] = shared
        subjectim[s, 1000:] = perm[1000 + s * 9000: 1000 + (s + 1) * 9000]
    cols = np.arange(1, 10001)
    three = np.r_[cols[0:100], cols[1000:1200]]        # shown 3x in sessions 1-3
    two = np.r_[cols[100:150], cols[1200:1600]]        # 2x
    one = np.r_[cols[150:200], cols[1600:2000]]        # 1x
    first = np.r_[np.repeat(three, 3), np.repeat(two, 2), one]
    assert first.size == 3 * TRIALS_PER_SESSION
    rest_cols = np.setdiff1d(cols, np.r_[three, two, one])
    rest = np.r_[two, np.repeat(one, 2), np.repeat(rest_cols, 3)]
    mo = np.r_[rng.permutation(first), rng.permutation(rest)].astype(np.uint16)
    assert mo.size == 30000
    arrays = {"masterordering": mo[None, :], "subjectim": subjectim, "sharedix": shared[None, :].astype(np.int32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), arrays, do_compression=True)
    return arrays


@dataclass
class TinyNSD:
    """A tiny NSD tree in the real formats (see :func:`make_nsd_tree`)."""

    root: Path
    subject: int
    shape: tuple                     # (X, Y, Z)
    sessions: list
    design: dict                     # 1-based arrays as written
    general: np.ndarray              # nsdgeneral volume (X, Y, Z): -1, 0, 1
    floc: dict                       # name -> label volume (X, Y, Z)
    betas: dict                      # session -> int16 array (750, Z, Y, X) as written
    affine: np.ndarray
    features: Path
    paths: dict = field(default_factory=dict)
    special: dict = field(default_factory=dict)  # named voxels (i, j, k)


def _local(name: str, **params) -> str:
    return fetch.get_entry(name, **params).local


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = REAL_LIKE_AFFINE) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((1.8, 1.8, 1.8))
    nib.save(img, str(path))
    return path


def write_betas(path: Path, betas: np.ndarray) -> Path:
    """Write a session file like NSD's: dataset ``betas``, int16, chunks of one voxel x 750 trials."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("betas", data=betas.astype(np.int16), chunks=(betas.shape[0], 1, 1, 1))
    return path


def make_nsd_tree(root: Path, subject: int = 1, shape=(6, 7, 5), sessions=(1, 2, 3), seed: int = 0,
                  n_features: int = 8, stim_info: bool = False, ctab: bool = True,
                  ncsnr_file: bool = False) -> TinyNSD:
    """Create a tiny NSD copy under ``root`` with the bucket's layout and NSD's file formats.

    Voxel ``(1, 1, 1)`` is outside the brain (-1), a few are outside nsdgeneral (0); ``flat`` is an
    nsdgeneral voxel that is constant in session 2 (its z-score is undefined, so it must be
    dropped); ``sign`` alternates +1/-1 percent signal change by trial parity in every session, so
    its z-scored trials are exactly +1/-1.
    """
    from braincorl_lite.nsd.features import save_features

    rng = np.random.default_rng(seed)
    root = Path(root)
    X, Y, Z = shape
    design = make_design(root / _local("nsd.expdesign"), seed=seed)

    general = np.ones(shape, dtype=np.int16)
    general[0, :, :] = 0
    general[:, 0, 0] = 0
    general[1, 1, 1] = -1
    special = {"outside": (1, 1, 1), "flat": (2, 3, 2), "sign": (3, 4, 3),
               "ffa1": (2, 2, 2), "ffa2": (2, 2, 3), "ofa": (4, 2, 2), "mtl_faces": (4, 3, 2),
               "ppa": (3, 5, 1), "eba": (5, 5, 3), "vwfa1": (4, 6, 4), "owfa": (5, 6, 4),
               "overlap": (3, 3, 3), "label_outside_general": (0, 3, 3)}
    floc = {name: np.zeros(shape, dtype=np.int16) for name in FLOC_FILES}
    for name in FLOC_FILES:
        floc[name][general == -1] = -1
    floc["floc-faces"][special["ffa1"]] = 2
    floc["floc-faces"][special["ffa2"]] = 3
    floc["floc-faces"][special["ofa"]] = 1
    floc["floc-faces"][special["mtl_faces"]] = 4
    floc["floc-faces"][special["overlap"]] = 2
    floc["floc-bodies"][special["overlap"]] = 1
    floc["floc-places"][special["ppa"]] = 2
    floc["floc-bodies"][special["eba"]] = 1
    floc["floc-words"][special["vwfa1"]] = 2
    floc["floc-words"][special["owfa"]] = 1
    floc["floc-faces"][special["label_outside_general"]] = 1

    paths = {"design": root / _local("nsd.expdesign"),
             "nsdgeneral": write_nifti(root / _local("nsd.roi.nsdgeneral", subject=subject), general)}
    for name in FLOC_FILES:
        paths[name] = write_nifti(root / _local(f"nsd.roi.{name}", subject=subject), floc[name])
        if ctab:
            p = root / _local(f"nsd.ctab.{name}", subject=subject)
            p.parent.mkdir(parents=True, exist_ok=True)
            lines = ["0 Unknown"] + [f"{v} {n}" for v, n in FLOC_LABELS[name].items()]
            p.write_text("\n".join(lines) + "\n")

    # betas: per-image response + noise, with a per-session offset and gain per voxel
    subjectim = design["subjectim"][subject - 1] - 1
    mo = design["masterordering"].ravel().astype(np.int64) - 1
    response = rng.normal(0, 1.0, size=(10000,) + shape)
    brain = general >= 0
    betas = {}
    for s in sessions:
        cols = mo[(s - 1) * TRIALS_PER_SESSION: s * TRIALS_PER_SESSION]
        offset = rng.normal(0, 1.0, size=shape)
        gain = rng.uniform(0.5, 2.0, size=shape)
        noise = rng.normal(0, 1.0, size=(TRIALS_PER_SESSION,) + shape)
        psc = offset + gain * (response[cols] + noise)               # (750, X, Y, Z)
        psc[:, ~brain] = 0.0                                          # NSD zeroes non-brain voxels
        parity = np.where(np.arange(TRIALS_PER_SESSION) % 2 == 0, 1.0, -1.0)
        psc[(slice(None),) + special["sign"]] = parity
        if s == 2:
            psc[(slice(None),) + special["flat"]] = 0.0
        vol = np.round(psc * 300).astype(np.int16)
        betas[s] = np.ascontiguousarray(vol.transpose(0, 3, 2, 1))  # (750, Z, Y, X) as h5py sees NSD's files
        paths[f"betas{s}"] = write_betas(root / _local("nsd.betas_session", subject=subject, session=s), betas[s])

    if ncsnr_file:
        snr = rng.uniform(0.1, 1.0, size=shape).astype(np.float32)
        snr[~brain] = np.nan
        paths["ncsnr"] = write_nifti(root / _local("nsd.ncsnr", subject=subject), snr)

    ids = np.sort(subjectim)
    feats = rng.normal(size=(ids.size, n_features))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    features = save_features(root / f"subj{subject:02d}_features.h5", ids, feats,
                             attrs={"model": "random-test", "pretrained": "none"})
    if stim_info:
        paths["stim_info"] = write_stim_info(root / _local("nsd.stim_info"), design)
    return TinyNSD(root=root, subject=subject, shape=tuple(shape), sessions=list(sessions), design=design,
                   general=general, floc=floc, betas=betas, affine=REAL_LIKE_AFFINE, features=features,
                   paths=paths, special=special)


def write_stim_info(path: Path, design: dict) -> Path:
    """Write ``nsd_stim_info_merged.csv`` with NSD's columns for the given design."""
    import pandas as pd

    n = 73000
    mo = design["masterordering"].ravel().astype(np.int64) - 1
    df = pd.DataFrame({
        "cocoId": np.arange(n) * 7 + 9,
        "cocoSplit": np.where(np.arange(n) % 2 == 0, "train2017", "val2017"),
        "cropBox": "(0, 0, 0.1671875, 0.1671875)",
        "loss": 0.0,
        "nsdId": np.arange(n),
        "flagged": False,
        "BOLD5000": False,
        "shared1000": np.isin(np.arange(n), design["sharedix"].ravel() - 1),
    })
    for s in range(8):
        ids = design["subjectim"][s] - 1
        df[f"subject{s + 1}"] = np.isin(np.arange(n), ids).astype(int)
    for s in range(8):
        trial_ids = design["subjectim"][s][mo] - 1
        order = np.argsort(trial_ids, kind="stable")           # trials grouped by image, in time order
        sorted_ids = trial_ids[order]
        first = np.searchsorted(sorted_ids, sorted_ids)         # start of each image's group
        rank = np.arange(sorted_ids.size) - first               # 0, 1, 2 within the group
        reps = np.zeros((n, 3), dtype=np.int64)
        reps[sorted_ids, rank] = order + 1                      # 1-based trial numbers
        for r in range(3):
            df[f"subject{s + 1}_rep{r}"] = reps[:, r]
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)  # with the unnamed index column, as NSD's file has
    return path


@pytest.fixture
def tiny_nsd(tmp_path):
    """A fresh tiny NSD tree for tests that modify it."""
    return make_nsd_tree(tmp_path / "nsd")


@pytest.fixture(scope="module")
def tiny_nsd_shared(tmp_path_factory):
    """A tiny NSD tree shared by the read-only tests of a module."""
    return make_nsd_tree(tmp_path_factory.mktemp("nsd_shared"), stim_info=True, ncsnr_file=True)


# ---------------------------------------------------------------------- encoders
class FakeEncoder:
    """A deterministic stand-in for :class:`braincorl_lite.nsd.features.ClipEncoder` (no torch).

    Embeds an image by simple pixel statistics, normalised to unit length.
    """

    name = "fake"
    pretrained = "none"
    weights_sha256 = ""
    embed_dim = 8
    device = "cpu"

    def __init__(self):
        self.images_seen = 0

    def describe(self):
        return {"model": self.name, "pretrained": self.pretrained, "weights_sha256": "",
                "embed_dim": self.embed_dim, "open_clip_version": "none"}

    def encode_images(self, images, batch_size=64):
        rows = []
        for im in images:
            a = np.asarray(im, dtype=np.float64)
            v = np.array([a[..., 0].mean(), a[..., 1].mean(), a[..., 2].mean(), a.std(),
                          a[::2].mean(), a[:, ::2].mean(), a.max() + 1, a.min() + 1])
            rows.append(v / np.linalg.norm(v))
        self.images_seen += len(rows)
        return np.asarray(rows, dtype=np.float32)


TINY_CLIP = "braincorl-tiny-test"


@pytest.fixture(scope="session")
def tiny_clip_model(tmp_path_factory):
    """Register a tiny randomly initialised open_clip config and return its name."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip_cfg")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    return TINY_CLIP


def make_stimuli_hdf5(path: Path, n: int = 12, size: int = 425, seed: int = 0) -> Path:
    """A small ``nsd_stimuli.hdf5``: dataset ``imgBrick`` (n, size, size, 3) uint8 of
    real-looking images (smooth colour gradients with shapes)."""
    import h5py

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        base = np.stack([np.sin(6 * xx * rng.uniform(0.5, 2) + c) for c in range(3)], axis=-1) * 60 + 120
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        base[disk] = rng.uniform(0, 255, size=3)
        imgs[i] = np.clip(base + rng.normal(0, 5, size=base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("imgBrick", data=imgs, chunks=(1, size, size, 3))
    return path
