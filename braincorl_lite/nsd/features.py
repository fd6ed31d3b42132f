"""CLIP image and text embeddings with open_clip, and the features files that store them.

:func:`load_clip` takes the checkpoint of ``data_manifests/clip.yaml`` from the cache (never from
a model hub at run time) and hands the file to ``open_clip.create_model_and_transforms``.

A features file (HDF5) holds ``/features`` (float32, unit-norm rows), ``/image_ids`` (0-based NSD
ids, or 0..n-1 for a folder), ``/names`` (folders), ``/done`` (one flag per chunk) and provenance
attributes (model, tag, weights sha256, source...). Extraction fills ``<out>.partial`` chunk by
chunk (a rerun resumes), renames it when complete, and holds ``<out>.lock`` meanwhile.

>>> enc = load_clip("ViT-B-32", "openai")                              # doctest: +SKIP
>>> extract_nsd_features("nsd_stimuli.hdf5", "clip.h5", encoder=enc)  # doctest: +SKIP
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

from .._device import resolve_device
from ..data import atomic_write
from ..errors import BraInCoRLError, ConfigError
from . import fetch
from .design import open_hdf5

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: photographs bundled with scikit-image (no download), used by the feature-extraction chapter
SAMPLE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "page", "grass", "hubble_deep_field")
_FINGERPRINT = ("model", "pretrained", "weights_sha256", "source_kind", "chunk_size", "ids_sha1", "n_images")


class FeaturesInputError(BraInCoRLError, ValueError):
    """An image, checkpoint or output file that cannot be used (the message names it)."""


class OutputLockedError(BraInCoRLError, RuntimeError):
    """Another extraction is writing the same output file."""


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class ClipEncoder:
    """An open_clip ``model`` with its ``preprocess`` (PIL image -> tensor), ``tokenizer`` and
    ``device``; ``name`` and ``pretrained`` tag (``"none"``: random weights) and ``weights_sha256``.
    Build it with :func:`load_clip`."""

    def __init__(self, model, preprocess, tokenizer, device, name: str, pretrained: str, weights_sha256: str = ""):
        self.model, self.preprocess, self.tokenizer, self.device = model.eval(), preprocess, tokenizer, device
        self.name, self.pretrained, self.weights_sha256 = name, pretrained, weights_sha256 or ""

    @property
    def embed_dim(self) -> int:
        """Size of the joint image/text embedding."""
        return int(self.model.visual.output_dim)

    def describe(self) -> dict:
        """Provenance attributes written into feature files."""
        import open_clip

        return {"model": self.name, "pretrained": self.pretrained, "weights_sha256": self.weights_sha256,
                "embed_dim": self.embed_dim, "open_clip_version": open_clip.__version__}

    def _embed(self, fn, batches) -> np.ndarray:
        import torch

        out = []
        for batch in batches:
            with torch.inference_mode():
                t = fn(batch.to(self.device)).float()
            norms = t.norm(dim=-1, keepdim=True)
            if not bool((norms > 0).all()) or not bool(t.isfinite().all()):
                raise FloatingPointError("the model produced a zero or non-finite embedding")
            out.append((t / norms).cpu().numpy().astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), dtype=np.float32)

    def encode_images(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """Unit-norm embeddings, float32 (n_images, embed_dim), of PIL images or uint8 (H, W, 3) arrays."""
        import torch

        return self._embed(self.model.encode_image, (
            torch.stack([self.preprocess(_to_pil(im)) for im in images[s:s + batch_size]])
            for s in range(0, len(images), batch_size)))

    def encode_text(self, texts: Union[str, Sequence[str]], batch_size: int = 256) -> np.ndarray:
        """Unit-norm CLIP text embeddings, float32 (n_texts, embed_dim)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("encode_text needs at least one text")
        return self._embed(self.model.encode_text, (
            self.tokenizer(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)))


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
        open_clip model name (``"ViT-B-32"``, or a config added with ``open_clip.add_model_config``).
    pretrained : str or None
        Weights tag of ``data_manifests/clip.yaml`` (``"openai"``, ``"laion2b_s34b_b79k"``);
        ``None``/``"none"``: random weights. ``weights`` replaces the manifest's file.
    download : bool
        Download a missing checkpoint (default: raise
        :class:`~braincorl_lite.nsd.MissingDataError`).
    quick_gelu : bool, optional
        QuickGELU activations; a manifest tag sets it (a contradicting value raises
        :class:`~braincorl_lite.errors.ConfigError`); needed with ``weights`` and a tag the manifest
        does not know.
    """
    import open_clip
    import pooch

    tag = "none" if pretrained in (None, "none", "") else str(pretrained)
    kwargs, sha, oc = {}, "", None
    if tag != "none":
        try:
            oc = fetch.clip_entry(model, tag).open_clip
        except KeyError as exc:
            if weights is None:
                raise
            if quick_gelu is None:
                raise ConfigError(
                    f"--weights {weights} is labelled --pretrained {tag}, which data_manifests/clip.yaml does not "
                    f"list for {model}, so whether it needs QuickGELU activations is unknown (OpenAI weights do; "
                    "wrong activations give wrong embeddings without any error). Use a tag the manifest knows "
                    "(see `braincorl-lite fetch list`) or say --quick-gelu / --no-quick-gelu.") from exc
    if oc is not None:
        if quick_gelu is not None and bool(quick_gelu) != bool(oc["quick_gelu"]):
            raise ConfigError(f"{model} / {tag} uses quick_gelu={bool(oc['quick_gelu'])} (data_manifests/clip.yaml); "
                              f"quick_gelu={bool(quick_gelu)} would give wrong embeddings")
        quick_gelu = oc["quick_gelu"]
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in oc.items()
                  if k in ("image_mean", "image_std", "image_interpolation", "image_resize_mode")}
        if weights is None:
            entry = fetch.clip_entry(model, tag)
            weights = fetch.locate(entry, download=download)
            sha = entry.sha256 or fetch.read_pins().get(entry.pin_key, {}).get("sha256", "")
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"no checkpoint file at {weights}")
        sha = sha or pooch.file_hash(str(weights), alg="sha256")
    dev = resolve_device(device)
    if model not in open_clip.list_models():
        raise ConfigError(f"open_clip has no model {model!r}; known: {', '.join(open_clip.list_models()[:20])}, ...")
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=str(weights) if weights is not None else None,
            force_quick_gelu=bool(quick_gelu), device=dev, **kwargs)
    except Exception as exc:  # torch.load and open_clip raise many types for a bad file
        if weights is None:
            raise
        raise FeaturesInputError(
            f"cannot load the CLIP checkpoint {weights} as open_clip {model!r} ({_first_line(exc)}). The file is "
            "damaged (delete it and fetch it again) or holds another model's weights.") from exc
    if tag == "none" and weights is None:
        log.warning("CLIP model %s has random weights (pretrained=None): embeddings are meaningless", model)
    elif tag == "none":
        tag = f"file:{Path(weights).name}"  # an explicit checkpoint without a manifest tag
    import torch

    return ClipEncoder(net, preprocess, open_clip.get_tokenizer(model), torch.device(dev), model, tag, sha)


@functools.lru_cache(maxsize=4)
def _cached_encoder(model: str, pretrained: str, device: str) -> ClipEncoder:
    return load_clip(model, pretrained, device=device)


def encode_text(texts: Union[str, Sequence[str]], model: str = "ViT-B-32", pretrained: str = "openai",
                device: Optional[str] = None, encoder: Optional[ClipEncoder] = None) -> np.ndarray:
    """Unit-norm CLIP text embeddings, float32 (n_texts, embed_dim), with ``encoder`` or the
    cached ``(model, pretrained)`` checkpoint (loaded once per process)."""
    return (encoder or _cached_encoder(model, pretrained, resolve_device(device))).encode_text(texts)


def clip_weights_status(model: str = "ViT-B-32", pretrained: str = "openai") -> dict:
    """Whether the manifest's CLIP checkpoint is cached (nothing is downloaded): ``entry``,
    ``cached``, ``path``, ``fetch_command``, ``url``, ``licence``.

    >>> clip_weights_status()["fetch_command"]
    'braincorl-lite fetch clip --model ViT-B-32 --pretrained openai'
    """
    entry = fetch.clip_entry(model, pretrained)
    return {"entry": entry.name, "cached": entry.path().is_file(), "path": str(entry.path()),
            "fetch_command": fetch.fetch_command(entry), "url": entry.url, "licence": entry.licence}


def load_clip_offline(model: str = "ViT-B-32", pretrained: str = "openai", device: Optional[str] = None,
                      seed: int = 0) -> ClipEncoder:
    """The cached CLIP weights when present, else the same architecture with random weights
    (seeded by ``seed``; then ``encoder.pretrained == "none"``). Never downloads."""
    try:
        return load_clip(model, pretrained, device=device)
    except fetch.MissingDataError:
        import torch

        torch.manual_seed(seed)
        return load_clip(model, None, device=device)


def sample_photographs(names: Optional[Sequence[str]] = None) -> dict:
    """Photographs bundled with scikit-image (``SAMPLE_PHOTOS``, no download), name -> RGB uint8.

    >>> {k: v.shape for k, v in sample_photographs(["astronaut", "camera"]).items()}
    {'astronaut': (512, 512, 3), 'camera': (512, 512, 3)}
    """
    from skimage import data as skdata

    out = {}
    for name in SAMPLE_PHOTOS if names is None else names:
        if name not in SAMPLE_PHOTOS:
            raise ValueError(f"{name!r} is not one of the bundled photographs {SAMPLE_PHOTOS}")
        img = np.asarray(getattr(skdata, name)())
        img = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-12))).astype(np.uint8)
        out[name] = np.ascontiguousarray(img[:, :, :3])
    return out


# ---------------------------------------------------------------------- feature files
def _attrs_of(h5) -> dict:
    return {k: v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v
            for k, v in h5.attrs.items()}


def _check_unit_norm(ids, feats, where: str):
    if feats.ndim != 2 or feats.shape[0] != ids.shape[0]:
        raise ValueError(f"{where}: features {feats.shape} and image_ids {ids.shape} do not match")
    norms = np.linalg.norm(feats, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{where}: features must be unit-norm rows (norms {norms.min():.4f}..{norms.max():.4f})")


def save_features(path: Union[str, Path], image_ids, features, attrs: Optional[dict] = None,
                  names: Optional[Sequence[str]] = None) -> Path:
    """Write a complete features file (unit-norm rows; atomic: temporary file, then rename)."""
    import h5py

    path, ids, feats = Path(path), np.asarray(image_ids, dtype=np.int64), np.asarray(features, dtype=np.float32)
    _check_unit_norm(ids, feats, str(path))
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset("features", data=feats)
        fh.create_dataset("image_ids", data=ids)
        if names is not None:
            fh.create_dataset("names", data=np.asarray(list(names), dtype=object), dtype=h5py.string_dtype())
        fh.attrs.update({"normalised": True, "complete": True, "embed_dim": feats.shape[1], "n_images": ids.size,
                         **(attrs or {})})
    return path


def load_features(path: Union[str, Path]):
    """Read a features file (HDF5, or ``.npz`` with ``image_ids`` and ``features``).

    Returns ``(image_ids int64 (n,), features float32 (n, d), attrs dict)``; raises for a missing
    file, an unfinished extraction or rows that are not unit-norm.
    """
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        raise FileNotFoundError(f"no features file at {path}" + (
            f" (an unfinished extraction is at {partial}: rerun extract-features to complete it)" * partial.exists()))
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
                ids, feats = fh["image_ids"][()].astype(np.int64), fh["features"][()].astype(np.float32)
        except OSError as exc:
            raise ValueError(f"cannot read the features file {path}: {exc}") from exc
    _check_unit_norm(ids, feats, str(path))
    return ids, feats, attrs


@contextlib.contextmanager
def _output_lock(out: Path):
    """Hold ``<out>.lock`` (``flock``) while ``out`` is written; refuse when another run holds it."""
    import fcntl

    lock = Path(str(out) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise OutputLockedError(
                f"another extract-features run (pid {holder}) is writing {out}: wait for it to finish, or choose "
                "another --out (its unfinished work is in use and must be left alone).") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                break  # else the previous holder removed the file between our open and flock: try again
        fh.close()
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        fh.close()


def _extract(out: Path, ids: np.ndarray, load: Callable, encoder: ClipEncoder, *, source_kind: str, source: str,
             names: Optional[list] = None, batch_size: int = 64, chunk_size: int = 1024,
             max_chunks: Optional[int] = None, overwrite: bool = False, progress: bool = True) -> Optional[Path]:
    import h5py
    from tqdm.auto import tqdm

    out, partial, n = Path(out), Path(str(out) + ".partial"), int(ids.size)
    if n == 0:
        raise ValueError("no images to encode")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    digest = hashlib.sha1(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    for name in names or ():
        digest.update(name.encode("utf-8") + b"\0")
    want = {**encoder.describe(), "source_kind": source_kind, "source": source, "chunk_size": int(chunk_size),
            "ids_sha1": digest.hexdigest(), "n_images": n}

    def mismatch(attrs):
        return [k for k in _FINGERPRINT if str(attrs.get(k)) != str(want.get(k))]

    with _output_lock(out):
        for p in (out, partial) if overwrite else ():
            p.unlink(missing_ok=True)
        if out.exists():
            try:
                with h5py.File(out, "r") as fh:
                    bad = mismatch(_attrs_of(fh))
            except OSError as exc:
                raise FeaturesInputError(f"{out} exists but is not a features file (not HDF5: {_first_line(exc)}); "
                                         "choose another --out, or pass --overwrite to replace it") from exc
            if bad:
                raise FileExistsError(f"{out} exists but was made with other settings ({bad}); use overwrite=True (--overwrite)")
            return out
        try:
            fh = h5py.File(partial, "a")
        except OSError as exc:
            raise OSError(f"cannot open the unfinished extraction {partial} ({exc}); delete it to start again") from exc
        with fh:
            if "done" not in fh:
                fh.create_dataset("image_ids", data=ids.astype(np.int64))
                fh.create_dataset("features", shape=(n, encoder.embed_dim), dtype=np.float32,
                                  chunks=(min(chunk_size, n), encoder.embed_dim))
                fh.create_dataset("done", data=np.zeros(-(-n // chunk_size), dtype=bool))
                if names is not None:
                    fh.create_dataset("names", data=np.asarray(names, dtype=object), dtype=h5py.string_dtype())
                fh.attrs.update({**want, "normalised": True, "complete": False})
            elif mismatch(_attrs_of(fh)):
                raise FileExistsError(f"{partial} holds an unfinished extraction with other settings "
                                      f"({mismatch(_attrs_of(fh))}); delete it or pass overwrite=True (--overwrite)")
            done = fh["done"][()]
            with tqdm(total=n, initial=int(min(n, done.sum() * chunk_size)), unit="img", desc="CLIP features",
                      disable=not progress) as bar:
                for count, c in enumerate(np.flatnonzero(~done)):
                    if max_chunks is not None and count >= max_chunks:
                        log.info("stopping after %d chunk(s); rerun to continue (%s)", count, partial)
                        return None
                    for s in range(c * chunk_size, min(n, (c + 1) * chunk_size), batch_size):
                        e = min(n, (c + 1) * chunk_size, s + batch_size)
                        fh["features"][s:e] = encoder.encode_images(load(s, e), batch_size=batch_size)
                        bar.update(e - s)
                    fh["done"][c] = True
                    fh.flush()
            fh.attrs["complete"] = True
        os.replace(partial, out)
    return out


def extract_nsd_features(stimuli: Union[str, Path], out: Union[str, Path], *, encoder: ClipEncoder,
                         image_ids: Optional[Iterable[int]] = None, **kwargs) -> Optional[Path]:
    """Embed NSD stimuli (``nsd_stimuli.hdf5``, dataset ``imgBrick`` (73000, 425, 425, 3) uint8) into ``out``.

    ``image_ids``: 0-based NSD ids (default all). ``kwargs``: ``batch_size`` (64), ``chunk_size``
    (images per resume unit, 1024), ``max_chunks`` (stop after this many new chunks), ``overwrite``
    (discard a file made with other settings), ``progress``. Returns ``out``, or None when stopped
    by ``max_chunks`` (rerun to continue).
    """
    sf, brick = open_hdf5(stimuli, "imgBrick", "NSD stimuli")
    with sf:
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise ValueError(f"{stimuli}: imgBrick must be (n, H, W, 3) uint8, got {brick.shape} {brick.dtype}")
        ids = np.unique(np.arange(brick.shape[0]) if image_ids is None else np.asarray(list(image_ids), dtype=np.int64))
        if ids.size and (ids[0] < 0 or ids[-1] >= brick.shape[0]):
            raise ValueError(f"image ids must lie in 0..{brick.shape[0] - 1}")

        def load(a, b):
            try:
                return list(brick[ids[a:b]])  # h5py needs increasing indices: ids are sorted
            except (OSError, RuntimeError) as exc:
                raise ValueError(f"reading images {ids[a]}..{ids[b - 1]} of {stimuli} failed: {exc}") from exc

        return _extract(out, ids, load, encoder, source_kind="nsd-hdf5", source=str(stimuli), **kwargs)


def extract_folder_features(images_dir: Union[str, Path], out: Union[str, Path], *, encoder: ClipEncoder,
                            recursive: bool = False, **kwargs) -> Optional[Path]:
    """Embed every image of a folder (sorted by name; ids 0..n-1, names in ``/names``).

    ``recursive`` also walks sub-folders; ``kwargs`` are those of :func:`extract_nsd_features`. An
    image that cannot be decoded raises ``FeaturesInputError`` (a ``ValueError``) naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    files = sorted(p for p in root.glob("**/*" if recursive else "*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")

    def load(a, b):
        imgs = []
        for p in files[a:b]:
            try:
                with Image.open(p) as im:
                    imgs.append(im.convert("RGB"))
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
                raise FeaturesInputError(f"cannot read image {p}: {_first_line(exc)}. Remove or replace it and run "
                                         "again (finished chunks are kept and resumed).") from exc
        return imgs

    return _extract(out, np.arange(len(files), dtype=np.int64), load, encoder, source_kind="images-dir",
                    source=str(root), names=[p.relative_to(root).as_posix() for p in files], **kwargs)
