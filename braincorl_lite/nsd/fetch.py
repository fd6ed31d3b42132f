"""Cached, hash-checked downloads of the files listed in ``data_manifests/*.yaml``.

Nothing touches the network unless asked: :func:`locate` returns (and checks) a cached file, and
downloads only with ``download=True`` (what ``braincorl-lite fetch ...`` does). The cache is
``$BRAINCORL_DATA``, else :func:`pooch.os_cache` (``~/.cache/braincorl_lite`` on Linux).

:mod:`pooch` downloads into a temporary file and moves it into place once its sha256 matches; our
:class:`ResumableDownloader` resumes a cut transfer with an HTTP range request. A file whose
manifest sha256 is ``null`` is pinned on first download (sha256 and size recorded in
``<cache>/pins.json``, checked on every later use: trust on first use).

Examples
--------
>>> entry = get_entry("nsd.betas_session", subject=1, session=3)
>>> entry.url.endswith("subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session03.hdf5")
True
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlparse

import pooch

from ..data import atomic_write
from ..errors import BraInCoRLError

log = logging.getLogger(__name__)

ENV_CACHE = "BRAINCORL_DATA"  #: environment variable naming the cache directory
ENV_MANIFESTS = "BRAINCORL_MANIFESTS"  #: another manifest directory (default: the repository's)
PINS_FILE = "pins.json"
_POOCH_TMP = re.compile(r"^tmp[a-z0-9_]{8}$")  # pooch's temporary files (tempfile's "tmp" + 8)
_LOCAL_DISK = "(This is a problem of the local disk, not of the network.)"


class FetchError(BraInCoRLError):
    """Base class of the download and cache errors."""


class MissingDataError(FetchError, FileNotFoundError):
    """A file is not in the cache and downloading was not requested."""


class DownloadError(FetchError, ConnectionError):
    """A download failed (offline, unreachable host, HTTP error) after all retries."""


class HTTPClientError(DownloadError):
    """The server answered with an HTTP 4xx status: not retried."""


class CacheDirError(FetchError, OSError):
    """The cache folder cannot be used (a file stands in its way, or it is not writable)."""


class HashMismatchError(FetchError, ValueError):
    """A file's sha256 (or size) differs from the manifest's or from its pin."""


class ManifestError(FetchError, ValueError):
    """No manifest, or one that cannot be read."""


def cache_dir() -> Path:
    """The cache directory: ``$BRAINCORL_DATA`` or the platform cache folder (not created)."""
    env = os.environ.get(ENV_CACHE, "").strip()
    return Path(env).expanduser().resolve() if env else Path(pooch.os_cache("braincorl_lite"))


def manifest_dir() -> Path:
    """``$BRAINCORL_MANIFESTS``, else ``data_manifests/`` at the root of the repository."""
    env = os.environ.get(ENV_MANIFESTS, "").strip()
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[2] / "data_manifests"


# ---------------------------------------------------------------------- manifest entries
@dataclass(frozen=True)
class Entry:
    """One file of a manifest (fields of ``data_manifests/README.md``), possibly a template whose
    ``{placeholders}`` :meth:`expand` fills (into ``params``)."""

    name: str
    group: str
    url: str
    local: str
    sha256: Optional[str] = None
    size_bytes: Optional[int] = None
    licence: str = ""
    description: str = ""
    manifest: str = ""
    cache_subdir: str = ""
    size_note: str = ""
    optional: bool = False
    placeholders: dict = field(default_factory=dict, hash=False)
    params: dict = field(default_factory=dict, hash=False)
    open_clip: Optional[dict] = field(default=None, hash=False)

    @property
    def is_template(self) -> bool:
        return bool(self.placeholders) and not self.params

    @property
    def label(self) -> str:
        """Name plus parameters, e.g. ``nsd.betas_session(session=3, subject=1)``."""
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({args})" if args else self.name

    @property
    def pin_key(self) -> str:
        """Key of the entry in ``pins.json``: its path below the cache directory."""
        return f"{self.cache_subdir}/{self.local}"

    def expand(self, **params) -> "Entry":
        """Fill the placeholders (integers within the manifest's ranges); ``ValueError`` otherwise."""
        if set(params) != set(self.placeholders) or self.params:
            missing, extra = set(self.placeholders) - set(params), set(params) - set(self.placeholders)
            raise ValueError(f"{self.name} needs exactly the parameters {sorted(self.placeholders)}"
                             + (f"; missing {sorted(missing)}" if missing else "")
                             + (f"; unexpected {sorted(extra)}" if extra else ""))
        for key, value in params.items():
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise ValueError(f"{self.name}: {key} must be an integer, got {value!r}")
            params[key] = value = value.__index__()
            lo, hi = self.placeholders[key]["min"], self.placeholders[key]["max"]
            if not lo <= value <= hi:
                raise ValueError(f"{self.name}: {key}={value} is outside the allowed range {lo}..{hi}")
        return replace(self, url=self.url.format(**params), local=self.local.format(**params), params=params)

    def path(self, cache: Optional[os.PathLike] = None) -> Path:
        """Where the (expanded) file lives in the cache."""
        if self.is_template:
            raise ValueError(f"{self.name} is a template: call .expand({', '.join(self.placeholders)}) first")
        return Path(cache if cache is not None else cache_dir()) / self.cache_subdir / self.local


@functools.lru_cache(maxsize=8)
def _parse(stamps: tuple) -> dict:
    import yaml

    out = {}
    for path, _ in stamps:
        try:
            data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            for raw in data["files"]:
                item = {**(data.get("defaults") or {}), **raw}
                out[item["name"]] = Entry(
                    name=item["name"], group=item["group"], url=item["url"], local=item["local"],
                    sha256=item["sha256"], size_bytes=item["size_bytes"], licence=" ".join(item["licence"].split()),
                    description=" ".join(item["description"].split()), manifest=data["manifest"],
                    cache_subdir=data["cache_subdir"], size_note=" ".join(str(item.get("size_note", "")).split()),
                    optional=bool(item.get("optional", False)), placeholders=dict(item.get("placeholders") or {}),
                    open_clip=item.get("open_clip"))
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"cannot read the manifest {path}: {type(exc).__name__}: {exc}") from exc
    return out


def load_manifests(directory: Optional[os.PathLike] = None) -> dict:
    """``{name: Entry}`` over every ``*.yaml`` manifest of ``directory`` (default :func:`manifest_dir`).

    The schema is checked by the test suite (``tests/test_manifests.py``), not here.
    """
    directory = Path(directory) if directory is not None else manifest_dir()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ManifestError(f"no manifests (*.yaml) in {directory}; set ${ENV_MANIFESTS} to the data_manifests folder")
    return dict(_parse(tuple((str(p), p.stat().st_mtime_ns) for p in files)))


def get_entry(name: str, manifests: Optional[dict] = None, **params) -> Entry:
    """Look up a manifest entry by name and fill its placeholders (``subject=..., session=...``)."""
    manifests = manifests if manifests is not None else load_manifests()
    if name not in manifests:
        raise KeyError(f"no manifest entry named {name!r}; known entries: {sorted(manifests)}")
    entry = manifests[name]
    return entry.expand(**params) if (entry.placeholders or params) else entry


def clip_entry(model: str, pretrained: str, manifests: Optional[dict] = None) -> Entry:
    """The weights entry of an open_clip ``(model, pretrained)`` pair (``KeyError`` lists the known ones)."""
    manifests = manifests if manifests is not None else load_manifests()
    known = {(e.open_clip["model"], str(e.open_clip["pretrained"])): e for e in manifests.values() if e.open_clip}
    if (model, str(pretrained)) not in known:
        raise KeyError(f"no CLIP weights for model={model!r} pretrained={pretrained!r} in the manifests; "
                       f"known: {', '.join(f'{m} / {p}' for m, p in known) or 'none'}")
    return known[model, str(pretrained)]


def nsd_entries(subject: int, sessions: Iterable[int] = (), what: Iterable[str] = ("design", "rois", "betas"),
                include_optional: bool = True, manifests: Optional[dict] = None) -> list:
    """The expanded NSD entries of one subject: groups ``what`` (design, stimuli, betas, rois, ncsnr)."""
    manifests = manifests if manifests is not None else load_manifests()
    bad = set(what) - {"design", "stimuli", "betas", "rois", "ncsnr"}
    if bad:
        raise ValueError(f"unknown NSD file group(s) {sorted(bad)}; choose from design, stimuli, betas, rois, ncsnr")
    out = []
    for e in manifests.values():
        if e.manifest != "nsd" or e.group not in what or (e.optional and not include_optional):
            continue
        if "session" in e.placeholders:
            out += [e.expand(subject=subject, session=s) for s in sessions]
        else:
            out.append(e.expand(subject=subject) if e.placeholders else e)
    return out


def fetch_command(entry: Entry) -> str:
    """The ``braincorl-lite fetch ...`` command that downloads an (expanded) entry."""
    p = entry.params
    if entry.open_clip:
        return f"braincorl-lite fetch clip --model {entry.open_clip['model']} --pretrained {entry.open_clip['pretrained']}"
    if entry.manifest != "nsd":
        return f"braincorl_lite.nsd.fetch.locate({entry.name!r}, download=True)"
    return ("braincorl-lite fetch nsd" + (f" --subject {p['subject']}" if "subject" in p else "")
            + (f" --sessions {p['session']}" if "session" in p else "") + f" --what {entry.group}")


# ---------------------------------------------------------------------- trust-on-first-use pins
def read_pins(cache: Optional[os.PathLike] = None) -> dict:
    """The pins: ``{pin_key: {"sha256", "size", "url"}}``."""
    path = Path(cache if cache is not None else cache_dir()) / PINS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise FetchError(f"the pin file {path} is unreadable ({exc}); fix or delete it") from exc


def _write_pin(entry: Entry, cache: Path, pin: Optional[dict]) -> bool:
    pins = read_pins(cache)
    had = pins.pop(entry.pin_key, None) is not None
    if pin is not None:
        pins[entry.pin_key] = pin
    with atomic_write(cache / PINS_FILE) as tmp:
        tmp.write_text(json.dumps(pins, indent=1, sort_keys=True), encoding="utf-8")
    return had


def forget_pin(entry, cache: Optional[os.PathLike] = None, **params) -> bool:
    """Remove the pin of a file that changed upstream on purpose; whether there was one."""
    entry = entry if isinstance(entry, Entry) else get_entry(entry, **params)
    return _write_pin(entry, Path(cache if cache is not None else cache_dir()), None)


def forget_pin_command(entry: Entry) -> str:
    """The ``braincorl-lite fetch forget-pin ...`` command for an (expanded) entry."""
    return f"braincorl-lite fetch forget-pin {entry.name}" + "".join(f" --{k} {v}" for k, v in sorted(entry.params.items()))


def _upstream_advice(entry: Entry) -> str:
    if entry.sha256:
        return f"update the sha256 of {entry.name} in data_manifests/{entry.manifest}.yaml"
    return f"forget its pin with `{forget_pin_command(entry)}` and fetch it again"


def verify_file(entry: Entry, path: os.PathLike, cache: Optional[os.PathLike] = None,
                pin_if_unknown: bool = True) -> str:
    """Check a local file against the manifest's sha256 or its pin; return its sha256.

    A file with neither (placed by hand) is pinned now when ``pin_if_unknown``. Raises
    :class:`HashMismatchError` when the size or the sha256 differs.
    """
    path, cache = Path(path), Path(cache if cache is not None else cache_dir())
    pin = read_pins(cache).get(entry.pin_key) or {}
    expected, size = entry.sha256 or pin.get("sha256"), entry.size_bytes or pin.get("size")
    source = "the manifest" if entry.sha256 else "its pin of first download"
    if size is not None and path.stat().st_size != size:
        raise HashMismatchError(f"{entry.label}: {path} has {path.stat().st_size} bytes but {source} says {size}. "
                                f"The file is truncated or corrupt: delete it and run `{fetch_command(entry)}` again.")
    sha = pooch.file_hash(str(path), alg="sha256")
    if expected is None and pin_if_unknown:
        log.warning("%s has no known sha256; pinning %s (trust on first use)", entry.label, path)
        _write_pin(entry, cache, {"sha256": sha, "size": path.stat().st_size, "url": entry.url})
    elif expected is not None and sha != expected:
        raise HashMismatchError(
            f"{entry.label}: {path} has sha256 {sha} but {source} expects {expected}. The file is corrupt or "
            f"changed upstream. Delete it and run `{fetch_command(entry)}` again; if the file changed upstream "
            f"on purpose, {_upstream_advice(entry)}.")
    return sha


# ---------------------------------------------------------------------- downloading
class ResumableDownloader:
    """A pooch downloader that resumes cut transfers (HTTP ``Range``) and shows a ``tqdm`` bar.

    The bytes received so far stay in a hidden ``.part`` file next to the target; servers that
    ignore ranges simply send the whole file again.
    """

    def __init__(self, progressbar: bool = True, timeout: float = 60.0, chunk_size: int = 1 << 20):
        self.progressbar, self.timeout, self.chunk_size = progressbar, timeout, chunk_size

    @staticmethod
    def part_path(url: str, folder: os.PathLike) -> Path:
        """Where the partial download of ``url`` is kept."""
        name = Path(urlparse(url).path).name or "download"
        return Path(folder) / f".{name}.{hashlib.sha1(url.encode()).hexdigest()[:12]}.part"

    def __call__(self, url, output_file, pooch_obj=None):
        import requests
        from tqdm.auto import tqdm

        part = self.part_path(url, Path(output_file).parent)
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True) as resp:
            if have and resp.status_code == 416:  # our partial file is not a prefix of the remote file
                part.unlink()
                return self(url, output_file, pooch_obj)
            resp.raise_for_status()
            start = have if resp.status_code == 206 else 0
            length = resp.headers.get("Content-Length")
            total = int(length) + start if length is not None else None
            with open(part, "ab" if start else "wb") as fh, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=Path(urlparse(url).path).name, disable=not self.progressbar, leave=False) as bar:
                for chunk in resp.iter_content(chunk_size=self.chunk_size):
                    fh.write(chunk)
                    bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise requests.exceptions.ConnectionError(
                f"transfer of {url} stopped after {part.stat().st_size} of {total} bytes (kept for resuming)")
        os.replace(part, output_file)


def _prepare_folder(folder: Path) -> None:
    """Create a download folder or raise :class:`CacheDirError`; remove pooch temporaries of killed runs."""
    fix = f"point ${ENV_CACHE} (or --cache-dir) at a writable folder. {_LOCAL_DISK}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), folder)
        raise CacheDirError(f"the cache folder {folder} cannot be created: {blocker} is a file, not a folder. "
                            f"Move that file away, or {fix}") from exc
    except OSError as exc:
        raise CacheDirError(f"cannot create the cache folder {folder} ({exc.strerror or exc}); {fix}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CacheDirError(f"the cache folder {folder} is not writable (read-only disk or missing permission): "
                            f"make it writable, or {fix}")
    for stale in folder.iterdir():  # empty, or older than an hour (else maybe another live download)
        if _POOCH_TMP.match(stale.name) and stale.is_file() and (
                stale.stat().st_size == 0 or stale.stat().st_mtime < time.time() - 3600):
            stale.unlink(missing_ok=True)


def _download(entry: Entry, cache: Path, retries: int, progressbar: bool, timeout: float) -> Path:
    import requests

    parsed = urlparse(entry.url)
    if parsed.scheme != "https" and not (parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost", "::1")):
        raise FetchError(f"{entry.label}: refusing to download from {entry.url!r}: only https:// addresses are allowed")
    known = entry.sha256 or (read_pins(cache).get(entry.pin_key) or {}).get("sha256")
    _prepare_folder(entry.path(cache).parent)
    # pooch would retry hash mismatches and 404s too: transient failures are retried here instead
    store = pooch.create(path=cache / entry.cache_subdir, base_url="", retry_if_failed=0,
                         registry={entry.local: f"sha256:{known}" if known else None}, urls={entry.local: entry.url})
    for attempt in range(retries + 1):
        try:
            path = Path(store.fetch(entry.local, downloader=ResumableDownloader(progressbar, timeout)))
            break
        except ValueError as exc:  # pooch's hash mismatch: the same bytes would come again
            raise HashMismatchError(
                f"{entry.label}: the file downloaded from {entry.url} does not have the expected sha256 "
                f"({'manifest' if entry.sha256 else 'pinned on first download'}: {known}). Details: {exc}. The "
                f"transfer may have been corrupted (run the command again) or the file changed upstream (check, "
                f"then {_upstream_advice(entry)}).") from exc
        except requests.exceptions.RequestException as exc:
            status = getattr(exc.response, "status_code", None)
            if status is not None and status < 500 and status not in (408, 429):
                raise HTTPClientError(
                    f"could not download {entry.label}: the server answered HTTP {status} {exc.response.reason or ''} "
                    f"for {entry.url}. This is not a network problem and retrying will not help: the file is missing "
                    "upstream or access is refused (for NSD, check that you accepted the data-use terms; the URL "
                    f"comes from data_manifests/{entry.manifest}.yaml).") from exc
            if attempt == retries:
                raise DownloadError(
                    f"could not download {entry.label} from {entry.url} (after {retries} retries): "
                    f"{type(exc).__name__}: {exc}. Check your network connection (and proxy settings); an "
                    "interrupted transfer resumes when you run the command again. You can also place the file at "
                    f"{entry.path(cache)}; it will be checked on first use.") from exc
            log.info("download of %s failed (%s); trying again", entry.label, exc)
            time.sleep(min(attempt + 1, 10))
        except OSError as exc:
            raise CacheDirError(f"could not write {entry.label} into the cache: {exc.strerror or exc} "
                                f"({exc.filename or entry.path(cache).parent}). Free some space or fix the "
                                f"permissions, or point ${ENV_CACHE} (or --cache-dir) at another folder. {_LOCAL_DISK}") from exc
    if known is None:
        verify_file(entry, path, cache)  # pins it
    return path


def locate(entry, *, download: bool = False, verify: bool = True, cache: Optional[os.PathLike] = None,
           retries: int = 3, progressbar: bool = True, timeout: float = 60.0, **params) -> Path:
    """Path of a manifest file (name or ``Entry``, ``params`` fill its placeholders) in the cache.

    A cached file is checked against its sha256 (manifest or pin) when ``verify``; a missing one
    raises :class:`MissingDataError` with the fetch command, or is downloaded when ``download``
    (``retries`` extra attempts after transient failures; hash mismatches and HTTP 4xx are final).
    """
    if not isinstance(entry, Entry) or params:
        entry = get_entry(entry, **params) if not isinstance(entry, Entry) else entry.expand(**params)
    cache = Path(cache if cache is not None else cache_dir())
    path = entry.path(cache)
    if path.exists():
        if verify:
            verify_file(entry, path, cache)
        return path
    if not download:
        size = f"{entry.size_bytes / 1e6:.1f} MB" if entry.size_bytes else entry.size_note or "size unknown"
        raise MissingDataError(
            f"{entry.label} is not in the cache (expected at {path}). Nothing is downloaded automatically: run "
            f"`{fetch_command(entry)}` ({size}; source {entry.url}; terms: {entry.licence}), or set ${ENV_CACHE} "
            "to the folder that holds your copy.")
    return _download(entry, cache, retries, progressbar, timeout)


def fetch_entries(entries: Iterable[Entry], skip_missing_optional: bool = True, **kwargs) -> list:
    """Download (or check) entries one after the other; an unreachable optional one is skipped.

    ``kwargs`` go to :func:`locate`. Returns the paths now in the cache.
    """
    paths = []
    for entry in entries:
        try:
            paths.append(locate(entry, download=True, **kwargs))
        except DownloadError as exc:
            if not (entry.optional and skip_missing_optional):
                raise
            log.warning("skipping optional file %s: %s", entry.label, exc)
    return paths


def describe(entries: Iterable[Entry], cache: Optional[os.PathLike] = None) -> str:
    """A table of entries (present or missing, size, URL, destination) for ``fetch --dry-run``."""
    lines, total, unknown, pad = [], 0, 0, "\n" + " " * 24
    for e in entries:
        path = e.path(cache)
        total += (e.size_bytes or 0) * (not path.exists())
        unknown += not (path.exists() or e.size_bytes)
        size = f"{e.size_bytes / 1e6:10.1f} MB" if e.size_bytes else f"{'?':>10} MB"
        lines.append(f"{'present' if path.exists() else 'missing':8s} {size}  {e.label}{' (optional)' * e.optional}"
                     f"{pad}{e.url}{pad}-> {path}" + (f"{pad}size: {e.size_note}" if not e.size_bytes and e.size_note else ""))
    return "\n".join(lines + [f"to download: {total / 1e6:.1f} MB of known size"
                              + (f" plus {unknown} file(s) of unknown size (see size notes)" if unknown else "")])
