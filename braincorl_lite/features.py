"""CLIP image and text embeddings with open_clip, cached to disk.

Image embeddings are computed for NSD stimuli streamed from ``nsd_stimuli.hdf5`` (dataset
``imgBrick``, shape ``(73000, 425, 425, 3)``, uint8) or for any folder of images, in batches, on
CPU or CUDA, L2-normalised, and written to an HDF5 file that records the model and pretrained tag.
Work is done chunk by chunk and each finished chunk is marked in the file, so an interrupted
extraction resumes where it stopped.

Weights never come from a model hub at run time: :func:`load_clip` takes the checkpoint listed in
``data_manifests/clip.yaml`` from the cache (``braincorl-lite fetch clip`` downloads it, checked by
:mod:`braincorl_lite.fetch`) and hands the local file to
``open_clip.create_model_and_transforms(name, pretrained=<file>)``.

Features file (HDF5)
--------------------
``/features``   float32 ``(n_images, embed_dim)``, unit L2 norm per row
``/image_ids``  int64 ``(n_images,)``: 0-based NSD ids, or 0..n-1 for a folder
``/names``      (folders only) file names relative to the folder
``/done``       bool, one flag per chunk (resume bookkeeping)
attributes: ``model``, ``pretrained``, ``weights_sha256``, ``source_kind``, ``source``,
``embed_dim``, ``chunk_size``, ``normalised``, ``format_version``, ``open_clip_version``.

While running, the file is ``<out>.partial``; it is renamed to ``<out>`` once every chunk is done.
A run holds ``<out>.lock`` (an advisory ``flock``) meanwhile, so a second run writing the same
output is refused instead of sharing the file.

Examples
--------
>>> enc = load_clip("ViT-B-32", "openai")                      # doctest: +SKIP
>>> extract_nsd_features("nsd_stimuli.hdf5", "clip.h5", encoder=enc)  # doctest: +SKIP
>>> text = enc.encode_text(["a photo of a face"])              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from . import fetch
from .errors import BraInCoRLError, ConfigError

__all__ = [
    "FeaturesInputError",
    "OutputLockedError",
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "ClipEncoder",
    "default_device",
    "load_clip",
    "encode_text",
    "extract_nsd_features",
    "extract_folder_features",
    "load_features",
    "save_features",
    "subject_image_ids",
    "SAMPLE_PHOTOS",
    "sample_photographs",
    "clip_weights_status",
    "load_clip_offline",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_FINGERPRINT = ("model", "pretrained", "weights_sha256", "source_kind", "chunk_size", "ids_sha1", "n_images")


class FeaturesInputError(BraInCoRLError, ValueError):
    """An image, checkpoint or output file that cannot be used (the message names it)."""


class OutputLockedError(BraInCoRLError, RuntimeError):
    """Another extraction is writing the same output file."""


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:limit]}"


def default_device(device: Optional[str] = None):
    """``torch.device`` to run on: the one named, or CUDA when available, else CPU.

    Parameters
    ----------
    device : {None, "auto", "cpu", "cuda", "cuda:N"}
    """
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


class ClipEncoder:
    """An open_clip model with its image preprocessing and tokenizer.

    Build it with :func:`load_clip`.

    Attributes
    ----------
    model : torch.nn.Module
    preprocess : callable
        PIL image -> tensor, as open_clip defines it for the model.
    tokenizer : callable
    device : torch.device
    name, pretrained : str
        open_clip model name and pretrained tag (``"none"`` for random weights).
    weights_sha256 : str
        sha256 of the checkpoint file when known, else ``""``.
    """

    def __init__(self, model, preprocess, tokenizer, device, name: str, pretrained: str, weights_sha256: str = ""):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.pretrained = pretrained
        self.weights_sha256 = weights_sha256 or ""

    @property
    def embed_dim(self) -> int:
        """Size of the joint image/text embedding."""
        proj = getattr(self.model, "text_projection", None)
        if proj is not None and hasattr(proj, "shape"):
            return int(proj.shape[1])
        return int(self.model.visual.output_dim)

    def describe(self) -> dict:
        """Provenance attributes written into feature files."""
        import open_clip

        return {
            "model": self.name, "pretrained": self.pretrained, "weights_sha256": self.weights_sha256,
            "embed_dim": self.embed_dim, "open_clip_version": open_clip.__version__,
        }

    @staticmethod
    def _normalise(t) -> np.ndarray:
        t = t.float()
        norms = t.norm(dim=-1, keepdim=True)
        if not bool((norms > 0).all()) or not bool(t.isfinite().all()):
            raise FloatingPointError("the model produced a zero or non-finite embedding")
        return (t / norms).cpu().numpy().astype(np.float32)

    def encode_images(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """Unit-norm embeddings of images.

        Parameters
        ----------
        images : sequence of PIL.Image or uint8 arrays (H, W, 3)
        batch_size : int

        Returns
        -------
        ndarray, float32, shape (n_images, embed_dim)
        """
        import torch

        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(_to_pil(im)) for im in images[start:start + batch_size]])
            with torch.inference_mode():
                out.append(self._normalise(self.model.encode_image(batch.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), dtype=np.float32)

    def encode_text(self, texts: Union[str, Sequence[str]], batch_size: int = 256) -> np.ndarray:
        """Unit-norm CLIP text embeddings (the language chapter's prompts).

        Parameters
        ----------
        texts : str or sequence of str

        Returns
        -------
        ndarray, float32, shape (n_texts, embed_dim)
        """
        import torch

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("encode_text needs at least one text")
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
            with torch.inference_mode():
                out.append(self._normalise(self.model.encode_text(tokens)))
        return np.concatenate(out)


def _to_pil(img):
    from PIL import Image

    if isinstance(img, Image.Image):
        return img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"images must be PIL images or uint8 arrays (H, W, 3), got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


def load_clip(model: str = "ViT-B-32", pretrained: Optional[str] = "openai", *,
              weights: Optional[Union[str, Path]] = None, device: Optional[str] = None,
              download: bool = False, quick_gelu: Optional[bool] = None) -> ClipEncoder:
    """Build a :class:`ClipEncoder` from a local open_clip checkpoint.

    Parameters
    ----------
    model : str
        open_clip model name (``"ViT-B-32"``, or any config registered with
        ``open_clip.add_model_config``).
    pretrained : str or None
        Tag of the weights in ``data_manifests/clip.yaml`` (``"openai"``,
        ``"laion2b_s34b_b79k"``). ``None`` or ``"none"`` gives randomly initialised weights
        (tests, smoke runs; the embeddings are meaningless).
    weights : path, optional
        Use this checkpoint file instead of the manifest's.
    device : str, optional
        See :func:`default_device`.
    download : bool
        Download the manifest's checkpoint if it is not cached (default False: raise
        :class:`~braincorl_lite.fetch.MissingDataError` with the fetch command instead).
    quick_gelu : bool, optional
        QuickGELU activations (the OpenAI weights need them). For a manifest tag, also with
        ``weights``, the manifest's ``open_clip.quick_gelu`` is used and a contradicting value is
        refused; with ``weights`` and a tag the manifest does not know, it must be given.
        Default for random weights or ``pretrained=None``: False.

    Returns
    -------
    ClipEncoder

    Raises
    ------
    ConfigError
        ``weights`` with a tag the manifest does not know and no ``quick_gelu``, or a
        ``quick_gelu`` that contradicts the manifest.
    FeaturesInputError
        A checkpoint that open_clip cannot load (damaged file, other architecture).
    """
    kwargs = {}
    sha = ""
    tag = "none" if pretrained in (None, "none", "") else str(pretrained)
    entry = None
    if tag != "none":
        try:
            entry = fetch.clip_entry(model, tag)
        except KeyError as exc:
            if weights is None:
                raise
            if quick_gelu is None:
                raise ConfigError(
                    f"--weights {weights} is labelled --pretrained {tag}, which data_manifests/clip.yaml does not "
                    f"list for {model}, so whether it needs QuickGELU activations is unknown (OpenAI weights do; "
                    "wrong activations give wrong embeddings without any error). Use a tag the manifest knows "
                    "(see `braincorl-lite fetch list`) or say --quick-gelu / --no-quick-gelu."
                ) from exc
    if entry is not None:
        oc = entry.extra["open_clip"]
        if quick_gelu is not None and bool(quick_gelu) != bool(oc["quick_gelu"]):
            raise ConfigError(
                f"{model} / {tag} uses quick_gelu={bool(oc['quick_gelu'])} (data_manifests/clip.yaml); "
                f"quick_gelu={bool(quick_gelu)} would give wrong embeddings"
            )
        quick_gelu = bool(oc["quick_gelu"])
        for key in ("image_mean", "image_std", "image_interpolation", "image_resize_mode"):
            if key in oc:
                kwargs[key] = tuple(oc[key]) if isinstance(oc[key], list) else oc[key]
    if weights is None and entry is not None:
        weights = fetch.locate(entry, download=download)
        sha = entry.sha256 or fetch.read_pins().get(entry.pin_key, {}).get("sha256", "")
    elif weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"no checkpoint file at {weights}")
        import pooch

        sha = pooch.file_hash(str(weights), alg="sha256")
    dev = default_device(device)
    import open_clip

    if model not in open_clip.list_models():
        raise ConfigError(f"open_clip has no model {model!r}; known: {', '.join(open_clip.list_models()[:20])}, ...")
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=str(weights) if weights is not None else None,
            force_quick_gelu=bool(quick_gelu), device=dev, **kwargs,
        )
    except Exception as exc:  # torch.load and open_clip raise many types for a bad file
        if weights is None:
            raise
        raise FeaturesInputError(
            f"cannot load the CLIP checkpoint {weights} as open_clip {model!r} ({_first_line(exc)}). The file is "
            "damaged (delete it and fetch it again) or holds another model's weights."
        ) from exc
    tokenizer = open_clip.get_tokenizer(model)
    if tag == "none" and weights is None:
        log.warning("CLIP model %s has random weights (pretrained=None): embeddings are meaningless", model)
    if tag == "none" and weights is not None:
        tag = f"file:{Path(weights).name}"  # an explicit checkpoint without a manifest tag
    return ClipEncoder(net, preprocess, tokenizer, dev, name=model, pretrained=tag, weights_sha256=sha)


@functools.lru_cache(maxsize=4)
def _cached_encoder(model: str, pretrained: str, device: str) -> ClipEncoder:
    return load_clip(model, pretrained, device=device)


def encode_text(texts: Union[str, Sequence[str]], model: str = "ViT-B-32", pretrained: str = "openai",
                device: Optional[str] = None, encoder: Optional[ClipEncoder] = None) -> np.ndarray:
    """Unit-norm CLIP text embeddings.

    Parameters
    ----------
    texts : str or sequence of str
    model, pretrained : str
        Which cached checkpoint to use (loaded once per process) when ``encoder`` is not given.
    device : str, optional
    encoder : ClipEncoder, optional

    Returns
    -------
    ndarray, float32, shape (n_texts, embed_dim)
    """
    if encoder is None:
        encoder = _cached_encoder(model, pretrained, str(default_device(device)))
    return encoder.encode_text(texts)


# ---------------------------------------------------------------------- feature files
def _ids_digest(ids: np.ndarray, names: Optional[Sequence[str]] = None) -> str:
    h = hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    for n in names or ():
        h.update(n.encode("utf-8") + b"\0")
    return h.hexdigest()


def _attrs_of(h5) -> dict:
    out = {}
    for k, v in h5.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def save_features(path: Union[str, Path], image_ids, features, attrs: Optional[dict] = None,
                  names: Optional[Sequence[str]] = None) -> Path:
    """Write a complete features file in one go (atomic: temporary file, then rename).

    Parameters
    ----------
    path : path
    image_ids : array of int, shape (n,)
    features : array, shape (n, d)
        Must be unit-norm rows.
    attrs : dict, optional
        Provenance (``model``, ``pretrained``, ...).
    names : sequence of str, optional
    """
    import h5py

    path = Path(path)
    ids = np.asarray(image_ids, dtype=np.int64)
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != ids.shape[0]:
        raise ValueError(f"features {feats.shape} and image_ids {ids.shape} do not match")
    norms = np.linalg.norm(feats, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError("features must be unit-norm rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as fh:
        fh.create_dataset("features", data=feats)
        fh.create_dataset("image_ids", data=ids)
        if names is not None:
            fh.create_dataset("names", data=np.asarray(list(names), dtype=object), dtype=h5py.string_dtype())
        base = {"format_version": FORMAT_VERSION, "normalised": True, "complete": True,
                "embed_dim": feats.shape[1], "n_images": ids.size}
        for k, v in {**base, **(attrs or {})}.items():
            fh.attrs[k] = v
    os.replace(tmp, path)
    return path


def load_features(path: Union[str, Path]):
    """Read a features file (HDF5 written here, or ``.npz`` with ``image_ids`` and ``features``).

    Returns
    -------
    image_ids : ndarray of int64, shape (n,)
    features : ndarray of float32, shape (n, d)
    attrs : dict

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, unfinished extraction, or rows that are not unit-norm.
    """
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = f" (an unfinished extraction is at {partial}: rerun extract-features to complete it)" if partial.exists() else ""
        raise FileNotFoundError(f"no features file at {path}{hint}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            ids, feats, attrs = f["image_ids"].astype(np.int64), f["features"].astype(np.float32), {}
    else:
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                attrs = _attrs_of(fh)
                if not attrs.get("complete", False):
                    raise ValueError(f"{path} is an unfinished extraction; rerun extract-features to complete it")
                ids = fh["image_ids"][()].astype(np.int64)
                feats = fh["features"][()].astype(np.float32)
        except OSError as exc:
            raise ValueError(f"cannot read the features file {path}: {exc}") from exc
    if feats.ndim != 2 or feats.shape[0] != ids.shape[0]:
        raise ValueError(f"{path}: features {feats.shape} and image_ids {ids.shape} do not match")
    norms = np.linalg.norm(feats, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{path}: features are not unit-norm (norms {norms.min():.4f}..{norms.max():.4f})")
    return ids, feats, attrs


@contextlib.contextmanager
def _output_lock(out: Path):
    """Hold ``<out>.lock`` (``flock``) while ``out`` is written; refuse when another run holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    lock = out.with_name(out.name + ".lock")
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise OutputLockedError(
                f"another extract-features run (pid {holder}) is writing {out}: wait for it to finish, or "
                "choose another --out (its unfinished work is in use and must be left alone)."
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                break  # else the previous holder removed the file between our open and flock
        except FileNotFoundError:
            pass
        fh.close()
    with fh:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()


def _extract(out: Path, ids: np.ndarray, load: Callable, encoder: ClipEncoder, **kw) -> Optional[Path]:
    out = Path(out)
    if int(ids.size) == 0:
        raise ValueError("no images to encode")
    with _output_lock(out):
        return _extract_locked(out, ids, load, encoder, **kw)


def _extract_locked(out: Path, ids: np.ndarray, load: Callable, encoder: ClipEncoder, *, source_kind: str,
                    source: str, names: Optional[list], batch_size: int, chunk_size: int,
                    max_chunks: Optional[int], overwrite: bool, progress: bool) -> Optional[Path]:
    import h5py
    from tqdm.auto import tqdm

    partial = out.with_name(out.name + ".partial")
    n = int(ids.size)
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    want = {**encoder.describe(), "source_kind": source_kind, "source": source, "chunk_size": int(chunk_size),
            "ids_sha1": _ids_digest(ids, names), "n_images": n}

    def mismatch(attrs):
        return [k for k in _FINGERPRINT if str(attrs.get(k)) != str(want.get(k))]

    if overwrite:
        for p in (out, partial):
            if p.exists():
                p.unlink()
    if out.exists():
        try:
            with h5py.File(out, "r") as fh:
                bad = mismatch(_attrs_of(fh))
        except OSError as exc:
            raise FeaturesInputError(
                f"{out} exists but is not a features file (not HDF5: {_first_line(exc)}); choose another --out, "
                "or pass --overwrite to replace it"
            ) from exc
        if bad:
            raise FileExistsError(f"{out} exists but was made with other settings ({bad}); use overwrite=True (--overwrite)")
        log.info("%s is already complete", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-n // chunk_size)
    try:
        fh = h5py.File(partial, "a")
    except OSError as exc:
        raise OSError(f"cannot open the unfinished extraction {partial} ({exc}); delete it to start again") from exc
    with fh:
        if "done" in fh:
            bad = mismatch(_attrs_of(fh))
            if bad:
                raise FileExistsError(
                    f"{partial} holds an unfinished extraction with other settings ({bad}); delete it "
                    "or pass overwrite=True (--overwrite)"
                )
        else:
            fh.create_dataset("image_ids", data=ids.astype(np.int64))
            fh.create_dataset("features", shape=(n, encoder.embed_dim), dtype=np.float32,
                              chunks=(min(chunk_size, n), encoder.embed_dim))
            fh.create_dataset("done", data=np.zeros(n_chunks, dtype=bool))
            if names is not None:
                fh.create_dataset("names", data=np.asarray(names, dtype=object), dtype=h5py.string_dtype())
            for k, v in {**want, "format_version": FORMAT_VERSION, "normalised": True, "complete": False}.items():
                fh.attrs[k] = v
        done = fh["done"][()]
        todo = np.flatnonzero(~done)
        bar = tqdm(total=n, initial=int(min(n, done.sum() * chunk_size)), unit="img", desc="CLIP features",
                   disable=not progress)
        with bar:
            for count, c in enumerate(todo):
                if max_chunks is not None and count >= max_chunks:
                    log.info("stopping after %d chunk(s); rerun to continue (%s)", count, partial)
                    return None
                a, b = c * chunk_size, min(n, (c + 1) * chunk_size)
                for s in range(a, b, batch_size):
                    e = min(b, s + batch_size)
                    fh["features"][s:e] = encoder.encode_images(load(s, e), batch_size=batch_size)
                    bar.update(e - s)
                fh["done"][c] = True
                fh.flush()
        fh.attrs["complete"] = True
    os.replace(partial, out)
    return out


def subject_image_ids(design: Union[str, Path], subject: int) -> np.ndarray:
    """Sorted 0-based NSD ids of the 10,000 images of one subject (from ``nsd_expdesign.mat``)."""
    from .nsd import read_design

    d = read_design(design)
    if not 1 <= subject <= d.subjectim.shape[0]:
        raise ValueError(f"subject must be 1..{d.subjectim.shape[0]}, got {subject}")
    return np.unique(d.subjectim[subject - 1])


def extract_nsd_features(stimuli: Union[str, Path], out: Union[str, Path], *, encoder: ClipEncoder,
                         image_ids: Optional[Iterable[int]] = None, batch_size: int = 64,
                         chunk_size: int = 1024, max_chunks: Optional[int] = None,
                         overwrite: bool = False, progress: bool = True) -> Optional[Path]:
    """Embed NSD stimuli read from ``nsd_stimuli.hdf5``.

    Parameters
    ----------
    stimuli : path
        ``nsd_stimuli.hdf5`` (dataset ``imgBrick``, ``(73000, 425, 425, 3)`` uint8).
    out : path
        Features file to write (``<out>.partial`` while running).
    encoder : ClipEncoder
    image_ids : iterable of int, optional
        0-based NSD ids to embed (e.g. :func:`subject_image_ids`); default all.
    batch_size : int
        Images per forward pass.
    chunk_size : int
        Images per resume unit.
    max_chunks : int, optional
        Stop after this many new chunks (to split a long run across jobs); rerun to continue.
    overwrite : bool
        Discard an existing or unfinished file made with other settings.
    progress : bool

    Returns
    -------
    pathlib.Path or None
        ``out`` when complete, None when stopped early by ``max_chunks``.
    """
    import h5py

    stimuli = Path(stimuli)
    try:
        sf = h5py.File(stimuli, "r")
    except OSError as exc:
        raise ValueError(f"cannot open the NSD stimuli {stimuli}: {exc} (truncated download?)") from exc
    with sf:
        if "imgBrick" not in sf:
            raise ValueError(f"{stimuli} has no dataset 'imgBrick' (found {list(sf.keys())})")
        brick = sf["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise ValueError(f"{stimuli}: imgBrick must be (n, H, W, 3) uint8, got {brick.shape} {brick.dtype}")
        ids = np.arange(brick.shape[0]) if image_ids is None else np.asarray(list(image_ids), dtype=np.int64)
        ids = np.unique(ids)  # h5py reads need increasing indices
        if ids.size and (ids[0] < 0 or ids[-1] >= brick.shape[0]):
            raise ValueError(f"image ids must lie in 0..{brick.shape[0] - 1}")

        def load(a, b):
            try:
                return list(brick[ids[a:b]])
            except (OSError, RuntimeError) as exc:
                raise ValueError(f"reading images {ids[a]}..{ids[b - 1]} of {stimuli} failed: {exc}") from exc

        return _extract(Path(out), ids, load, encoder, source_kind="nsd-hdf5", source=str(stimuli), names=None,
                        batch_size=batch_size, chunk_size=chunk_size, max_chunks=max_chunks,
                        overwrite=overwrite, progress=progress)


def extract_folder_features(images_dir: Union[str, Path], out: Union[str, Path], *, encoder: ClipEncoder,
                            recursive: bool = False, batch_size: int = 64, chunk_size: int = 1024,
                            max_chunks: Optional[int] = None, overwrite: bool = False,
                            progress: bool = True) -> Optional[Path]:
    """Embed every image of a folder (sorted by name; ids 0..n-1, names stored in ``/names``).

    Parameters are those of :func:`extract_nsd_features`; ``recursive`` also walks sub-folders.

    Raises
    ------
    ValueError
        No images, or an image that cannot be decoded (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    names = [p.relative_to(root).as_posix() for p in files]

    def load(a, b):
        imgs = []
        for p in files[a:b]:
            try:
                with Image.open(p) as im:
                    imgs.append(im.convert("RGB"))
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
                raise FeaturesInputError(
                    f"cannot read image {p}: {_first_line(exc)}. Remove or replace it and run again "
                    "(finished chunks are kept and resumed)."
                ) from exc
        return imgs

    return _extract(Path(out), np.arange(len(files), dtype=np.int64), load, encoder, source_kind="images-dir",
                    source=str(root), names=names, batch_size=batch_size, chunk_size=chunk_size,
                    max_chunks=max_chunks, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------- offline demos (book chapter 1)
#: photographs bundled with scikit-image (no download), used by the feature-extraction chapter
SAMPLE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "page", "grass", "hubble_deep_field")


def sample_photographs(names: Optional[Sequence[str]] = None) -> dict:
    """A few real photographs that ship inside scikit-image, as RGB uint8 arrays.

    Parameters
    ----------
    names : sequence of str, optional
        Names of ``skimage.data`` images (default :data:`SAMPLE_PHOTOS`). Only images bundled with
        the package are accepted, so nothing is downloaded; grey-level images are repeated over
        three channels.

    Returns
    -------
    dict name -> ndarray (H, W, 3) uint8

    Examples
    --------
    >>> photos = sample_photographs(["astronaut", "camera"])
    >>> {k: v.shape for k, v in photos.items()}
    {'astronaut': (512, 512, 3), 'camera': (512, 512, 3)}
    """
    from skimage import data as skdata

    out = {}
    for name in (SAMPLE_PHOTOS if names is None else names):
        if name not in SAMPLE_PHOTOS:
            raise ValueError(f"{name!r} is not one of the bundled photographs {SAMPLE_PHOTOS}")
        img = np.asarray(getattr(skdata, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-12))).astype(np.uint8)
        out[name] = np.ascontiguousarray(img[:, :, :3])
    return out


def clip_weights_status(model: str = "ViT-B-32", pretrained: str = "openai") -> dict:
    """Whether the manifest's CLIP checkpoint is in the local cache (nothing is downloaded).

    Returns
    -------
    dict
        ``entry`` (manifest entry name), ``cached`` (bool), ``path`` (where the file is or would
        be), ``fetch_command`` (the ``braincorl-lite fetch clip ...`` command that downloads it),
        ``url``, ``licence``.

    Examples
    --------
    >>> clip_weights_status()["fetch_command"]
    'braincorl-lite fetch clip --model ViT-B-32 --pretrained openai'
    """
    entry = fetch.clip_entry(model, pretrained)
    path = entry.path(fetch.cache_dir())
    return {"entry": entry.name, "cached": path.is_file(), "path": str(path),
            "fetch_command": fetch.fetch_command(entry), "url": entry.url, "licence": entry.licence}


def load_clip_offline(model: str = "ViT-B-32", pretrained: str = "openai", device: Optional[str] = None,
                      seed: int = 0) -> ClipEncoder:
    """The cached CLIP weights when present, else the same architecture with random weights.

    Never downloads. Check ``encoder.pretrained``: ``"none"`` means random weights (the
    embeddings then have the right shape and unit norm but carry no meaning); the weights are
    fetched with the command in :func:`clip_weights_status`.

    Parameters
    ----------
    model, pretrained : str
        open_clip model name and manifest tag.
    device : str, optional
    seed : int
        Seed of the random initialisation (used only without weights), for reproducible output.

    Returns
    -------
    ClipEncoder
    """
    try:
        return load_clip(model, pretrained, device=device)
    except fetch.MissingDataError:
        import torch

        torch.manual_seed(seed)
        return load_clip(model, None, device=device)
