"""Cached, hash-checked downloads of the external files listed in ``data_manifests/``.

Nothing in this module touches the network unless it is asked to: :func:`locate` only returns
files that are already in the cache (and checks them) unless ``download=True`` is passed, which
is what ``braincorl-lite fetch ...`` does.

Where files go
--------------
The cache directory is ``$BRAINCORL_DATA`` when that environment variable is set, otherwise the
platform cache folder given by :func:`pooch.os_cache` (``~/.cache/braincorl_lite`` on Linux).
Each manifest has a ``cache_subdir`` (``nsd``, ``weights``) and each entry a ``local`` path below
it; the NSD files keep the bucket's own layout, so ``$BRAINCORL_DATA/nsd`` can also be used as (or
replaced by) an existing local copy of NSD.

Integrity
---------
Entries with a known ``sha256`` are checked after every download and on every use. Entries whose
hash is unknown (``sha256: null``) are pinned on first download: their sha256 and size are written
to ``<cache>/pins.json`` and checked on every later use (trust on first use).

Downloads go through :mod:`pooch` (a temporary file that is moved into place only once its hash
matches) with a downloader that shows a ``tqdm`` progress bar and resumes an interrupted transfer
with an HTTP range request when the server supports it. Only transient failures (no connection,
time-outs, HTTP 5xx, a cut transfer) are retried; a hash mismatch or an HTTP 4xx answer cannot
succeed on a second try and is reported at once. Empty temporary files that a killed run left in a
cache folder are removed before the next download there.

Examples
--------
>>> from braincorl_lite import fetch
>>> entry = fetch.get_entry("nsd.betas_session", subject=1, session=3)
>>> entry.url.endswith("subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session03.hdf5")
True
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import operator
import os
import re
import string
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional, Union
from urllib.parse import urlparse

import pooch

from .errors import BraInCoRLError

__all__ = [
    "ENV_CACHE",
    "ENV_MANIFESTS",
    "FetchError",
    "MissingDataError",
    "DownloadError",
    "HashMismatchError",
    "HTTPClientError",
    "CacheDirError",
    "ManifestError",
    "Entry",
    "ResumableDownloader",
    "cache_dir",
    "manifest_dir",
    "validate_manifest",
    "load_manifest",
    "load_manifests",
    "get_entry",
    "clip_entry",
    "nsd_entries",
    "locate",
    "fetch_entries",
    "verify_file",
    "read_pins",
    "forget_pin",
    "forget_pin_command",
    "describe",
    "fetch_command",
]

log = logging.getLogger(__name__)

#: environment variable naming the cache directory
ENV_CACHE = "BRAINCORL_DATA"
#: environment variable naming another manifest directory (default: the repository's data_manifests/)
ENV_MANIFESTS = "BRAINCORL_MANIFESTS"
#: how many times a failed download is tried again
DEFAULT_RETRIES = 3
PINS_FILE = "pins.json"

_GROUPS = ("design", "stimuli", "betas", "rois", "ncsnr", "weights")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("name", "group", "url", "local", "size_bytes", "sha256", "licence", "description")
_OPTIONAL = ("size_note", "sha256_note", "terms_url", "optional", "placeholders", "open_clip")
_TOP_REQUIRED = ("schema_version", "manifest", "cache_subdir", "files")
_TOP_OPTIONAL = ("title", "homepage", "notes", "defaults")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_MANIFEST_CACHE: dict = {}  # parsed manifests, keyed by folder and file stamps
_POOCH_TMP_RE = re.compile(r"^tmp[a-z0-9_]{8}$")  # names of pooch's temporary files (tempfile's "tmp" + 8)


# ---------------------------------------------------------------------- errors
class FetchError(BraInCoRLError):
    """Base class of the errors raised by :mod:`braincorl_lite.fetch`."""


class MissingDataError(FetchError, FileNotFoundError):
    """A file is not in the cache and downloading was not requested."""


class DownloadError(FetchError, ConnectionError):
    """A download failed (offline, unreachable host, HTTP error) after all retries."""


class HTTPClientError(DownloadError):
    """The server answered with an HTTP 4xx status (not found, forbidden...): not retried."""


class CacheDirError(FetchError, OSError):
    """The cache folder cannot be used (a file stands in its way, or it is not writable)."""


class HashMismatchError(FetchError, ValueError):
    """A file's sha256 (or size) differs from the manifest's or from its pin."""


class ManifestError(FetchError, ValueError):
    """A manifest file is malformed."""


# ---------------------------------------------------------------------- locations
def cache_dir() -> Path:
    """The cache directory: ``$BRAINCORL_DATA`` or the platform cache folder.

    Returns
    -------
    pathlib.Path
        The directory (not created here).
    """
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return Path(pooch.os_cache("braincorl_lite"))


def manifest_dir() -> Path:
    """The directory holding the ``*.yaml`` manifests.

    ``$BRAINCORL_MANIFESTS`` when set, else ``data_manifests/`` at the root of the repository
    that contains this package.
    """
    env = os.environ.get(ENV_MANIFESTS, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1] / "data_manifests"


# ---------------------------------------------------------------------- manifest entries
def _template_fields(template: str) -> set:
    """Names of the ``{field}`` placeholders of a format string."""
    return {fname for _, fname, _, _ in string.Formatter().parse(template) if fname}


@dataclass(frozen=True)
class Entry:
    """One external file of a manifest (possibly a template with placeholders).

    Attributes
    ----------
    name, group, url, local, sha256, size_bytes, licence, description
        The manifest fields (see ``data_manifests/README.md``).
    manifest : str
        Name of the manifest the entry comes from.
    cache_subdir : str
        Folder of the manifest below the cache directory.
    placeholders : dict
        ``{field: {"min": int, "max": int}}`` for template entries.
    params : dict
        The values substituted by :meth:`expand` (empty for a template).
    extra : dict
        Entry-specific fields, e.g. ``open_clip`` for CLIP weights.
    """

    name: str
    group: str
    url: str
    local: str
    sha256: Optional[str]
    size_bytes: Optional[int]
    licence: str
    description: str
    manifest: str = ""
    cache_subdir: str = ""
    size_note: str = ""
    sha256_note: str = ""
    terms_url: str = ""
    optional: bool = False
    placeholders: dict = field(default_factory=dict, hash=False)
    params: dict = field(default_factory=dict, hash=False)
    extra: dict = field(default_factory=dict, hash=False)

    @property
    def is_template(self) -> bool:
        """True while placeholders remain to be filled by :meth:`expand`."""
        return bool(self.placeholders) and not self.params

    @property
    def label(self) -> str:
        """Name plus parameters, e.g. ``nsd.betas_session(subject=1, session=3)``."""
        if not self.params:
            return self.name
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({args})"

    def expand(self, **params) -> "Entry":
        """Fill the placeholders and return a concrete entry.

        Parameters
        ----------
        **params : int
            One value per placeholder (e.g. ``subject=1, session=3``), each within the range the
            manifest declares.

        Raises
        ------
        ValueError
            Missing, unexpected or out-of-range values.
        """
        if not self.placeholders:
            if params:
                raise ValueError(f"{self.name} takes no parameters, got {sorted(params)}")
            return self
        if self.params:
            raise ValueError(f"{self.label} is already expanded")
        want = set(self.placeholders)
        if set(params) != want:
            missing, extra = want - set(params), set(params) - want
            raise ValueError(
                f"{self.name} needs exactly the parameters {sorted(want)}"
                + (f"; missing {sorted(missing)}" if missing else "")
                + (f"; unexpected {sorted(extra)}" if extra else "")
            )
        clean = {}
        for key, value in params.items():
            try:
                if isinstance(value, bool):
                    raise TypeError
                value = operator.index(value)
            except TypeError:
                raise ValueError(f"{self.name}: {key} must be an integer, got {value!r}") from None
            lo, hi = self.placeholders[key]["min"], self.placeholders[key]["max"]
            if not lo <= value <= hi:
                raise ValueError(f"{self.name}: {key}={value} is outside the allowed range {lo}..{hi}")
            clean[key] = value
        return replace(self, url=self.url.format(**clean), local=self.local.format(**clean), params=clean)

    def path(self, cache: Optional[Union[str, Path]] = None) -> Path:
        """Where the (expanded) file lives in the cache."""
        if self.is_template:
            raise ValueError(f"{self.name} is a template: call .expand({', '.join(self.placeholders)}) first")
        root = Path(cache) if cache is not None else cache_dir()
        return root / self.cache_subdir / self.local

    @property
    def pin_key(self) -> str:
        """Key of the entry in ``pins.json``: its path relative to the cache directory."""
        return f"{self.cache_subdir}/{self.local}"


def _problems_of_entry(raw, defaults: dict, where: str) -> list:
    problems = []
    if not isinstance(raw, dict):
        return [f"{where}: each entry must be a mapping, got {type(raw).__name__}"]
    item = {**defaults, **raw}
    name = item.get("name", "?")
    where = f"{where} entry {name!r}"
    for key in _REQUIRED:
        if key not in item:
            problems.append(f"{where}: missing field '{key}'")
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        problems.append(f"{where}: unknown field(s) {sorted(unknown)} (typo?)")
    if problems:
        return problems
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(f"{where}: name must match {_NAME_RE.pattern}")
    if item["group"] not in _GROUPS:
        problems.append(f"{where}: group must be one of {_GROUPS}, got {item['group']!r}")
    url = item["url"]
    parsed = urlparse(str(url).replace("{", "").replace("}", ""))
    if parsed.scheme != "https" or not parsed.netloc:
        problems.append(f"{where}: url must be an https:// address, got {url!r}")
    local = str(item["local"])
    if local.startswith("/") or ".." in Path(local).parts or "\\" in local:
        problems.append(f"{where}: local must be a relative path without '..', got {local!r}")
    declared = item.get("placeholders") or {}
    if not isinstance(declared, dict):
        problems.append(f"{where}: placeholders must be a mapping")
        declared = {}
    try:
        in_url, in_local = _template_fields(str(url)), _template_fields(local)
    except ValueError as exc:
        problems.append(f"{where}: bad placeholder syntax ({exc})")
        in_url = in_local = set()
    if in_url != set(declared) or in_local != set(declared):
        problems.append(
            f"{where}: placeholders {sorted(declared)} must be exactly those used in url "
            f"{sorted(in_url)} and local {sorted(in_local)}"
        )
    for key, rng in declared.items():
        if not (isinstance(rng, dict) and isinstance(rng.get("min"), int) and isinstance(rng.get("max"), int)
                and rng["min"] <= rng["max"]):
            problems.append(f"{where}: placeholder {key!r} needs integer min <= max, got {rng!r}")
    size = item["size_bytes"]
    if size is None:
        if not item.get("size_note"):
            problems.append(f"{where}: size_bytes is null, so size_note must say roughly how large it is")
    elif isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        problems.append(f"{where}: size_bytes must be a positive integer or null, got {size!r}")
    sha = item["sha256"]
    if sha is None:
        if not item.get("sha256_note"):
            problems.append(f"{where}: sha256 is null, so sha256_note must say why")
    elif not isinstance(sha, str) or not _SHA_RE.match(sha):
        problems.append(f"{where}: sha256 must be 64 lowercase hex digits or null, got {sha!r}")
    for key in ("licence", "description"):
        if not isinstance(item[key], str) or not item[key].strip():
            problems.append(f"{where}: {key} must be a non-empty string")
    terms = item.get("terms_url")
    if terms is not None and urlparse(str(terms)).scheme != "https":
        problems.append(f"{where}: terms_url must be an https:// address, got {terms!r}")
    if "optional" in item and not isinstance(item["optional"], bool):
        problems.append(f"{where}: optional must be true or false")
    if item["group"] == "weights":
        oc = item.get("open_clip")
        if not isinstance(oc, dict) or not {"model", "pretrained", "quick_gelu"} <= set(oc):
            problems.append(f"{where}: weights entries need open_clip: {{model, pretrained, quick_gelu}}")
    return problems


def validate_manifest(data, source: str = "<manifest>") -> list:
    """List the problems of a parsed manifest (empty list when it is valid).

    Parameters
    ----------
    data : dict
        The parsed YAML document.
    source : str
        Name used in the messages (usually the file name).

    Returns
    -------
    list of str
    """
    if not isinstance(data, dict):
        return [f"{source}: the manifest must be a mapping"]
    problems = [f"{source}: missing top-level field '{k}'" for k in _TOP_REQUIRED if k not in data]
    unknown = set(data) - set(_TOP_REQUIRED) - set(_TOP_OPTIONAL)
    if unknown:
        problems.append(f"{source}: unknown top-level field(s) {sorted(unknown)}")
    if problems:
        return problems
    if data["schema_version"] != 1:
        problems.append(f"{source}: schema_version must be 1, got {data['schema_version']!r}")
    sub = str(data["cache_subdir"])
    if not _NAME_RE.match(sub):
        problems.append(f"{source}: cache_subdir must be a plain folder name, got {sub!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        return problems + [f"{source}: defaults must be a mapping"]
    files = data["files"]
    if not isinstance(files, list) or not files:
        return problems + [f"{source}: files must be a non-empty list"]
    seen_names, seen_urls, seen_local = set(), set(), set()
    for i, raw in enumerate(files):
        problems += _problems_of_entry(raw, defaults, f"{source} files[{i}]")
        if isinstance(raw, dict):
            for key, seen in (("name", seen_names), ("url", seen_urls), ("local", seen_local)):
                value = raw.get(key)
                if value in seen:
                    problems.append(f"{source}: duplicate {key} {value!r}")
                seen.add(value)
    return problems


def load_manifest(path: Union[str, Path]) -> list:
    """Read and validate one manifest file.

    Returns
    -------
    list of Entry

    Raises
    ------
    ManifestError
        When the file cannot be parsed or breaks the schema.
    """
    import yaml

    path = Path(path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    problems = validate_manifest(data, source=path.name)
    if problems:
        raise ManifestError(f"invalid manifest {path}:\n  " + "\n  ".join(problems))
    defaults = data.get("defaults") or {}
    entries = []
    for raw in data["files"]:
        item = {**defaults, **raw}
        entries.append(Entry(
            name=item["name"], group=item["group"], url=item["url"], local=item["local"],
            sha256=item["sha256"], size_bytes=item["size_bytes"], licence=item["licence"].strip(),
            description=" ".join(item["description"].split()), manifest=data["manifest"],
            cache_subdir=data["cache_subdir"], size_note=item.get("size_note", "") or "",
            sha256_note=item.get("sha256_note", "") or "", terms_url=item.get("terms_url", "") or "",
            optional=bool(item.get("optional", False)), placeholders=dict(item.get("placeholders") or {}),
            extra={"open_clip": dict(item["open_clip"])} if "open_clip" in item else {},
        ))
    return entries


def load_manifests(directory: Optional[Union[str, Path]] = None) -> dict:
    """Read every ``*.yaml`` manifest of a directory.

    Parameters
    ----------
    directory : path, optional
        Defaults to :func:`manifest_dir`.

    Returns
    -------
    dict
        ``{name: Entry}`` over all manifests.

    Raises
    ------
    ManifestError
        Unreadable or invalid manifests, or the same name in two manifests.
    """
    directory = Path(directory) if directory is not None else manifest_dir()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ManifestError(
            f"no manifests (*.yaml) in {directory}; set ${ENV_MANIFESTS} to the data_manifests folder"
        )
    stamp = (str(directory.resolve()), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files))
    if stamp in _MANIFEST_CACHE:
        return dict(_MANIFEST_CACHE[stamp])
    out = {}
    for path in files:
        for entry in load_manifest(path):
            if entry.name in out:
                raise ManifestError(f"entry {entry.name!r} appears in two manifests ({path.name})")
            out[entry.name] = entry
    _MANIFEST_CACHE.clear()
    _MANIFEST_CACHE[stamp] = out
    return dict(out)


def get_entry(name: str, manifests: Optional[dict] = None, **params) -> Entry:
    """Look up a manifest entry by name and fill its placeholders.

    Parameters
    ----------
    name : str
        Entry name, e.g. ``"nsd.expdesign"`` or ``"nsd.betas_session"``.
    manifests : dict, optional
        Result of :func:`load_manifests` (read from disk when omitted).
    **params : int
        Placeholder values (``subject=...``, ``session=...``).
    """
    manifests = manifests if manifests is not None else load_manifests()
    if name not in manifests:
        raise KeyError(f"no manifest entry named {name!r}; known entries: {sorted(manifests)}")
    entry = manifests[name]
    return entry.expand(**params) if (entry.placeholders or params) else entry


def clip_entry(model: str, pretrained: str, manifests: Optional[dict] = None) -> Entry:
    """The weights entry of an open_clip ``(model, pretrained)`` pair.

    Raises
    ------
    KeyError
        With the list of pairs the manifests know about.
    """
    manifests = manifests if manifests is not None else load_manifests()
    known = []
    for entry in manifests.values():
        oc = entry.extra.get("open_clip")
        if oc:
            known.append(f"{oc['model']} / {oc['pretrained']}")
            if oc["model"] == model and str(oc["pretrained"]) == str(pretrained):
                return entry
    raise KeyError(
        f"no CLIP weights for model={model!r} pretrained={pretrained!r} in the manifests; "
        f"known: {', '.join(known) or 'none'}"
    )


def nsd_entries(subject: int, sessions: Iterable[int] = (), what: Iterable[str] = ("design", "rois", "betas"),
                include_optional: bool = True, manifests: Optional[dict] = None) -> list:
    """The concrete NSD entries needed for one subject.

    Parameters
    ----------
    subject : int
        NSD subject, 1..8.
    sessions : iterable of int
        Sessions whose betas are wanted (only used when ``"betas"`` is in ``what``).
    what : iterable of str
        Groups to include: ``design``, ``stimuli``, ``betas``, ``rois``, ``ncsnr``.
    include_optional : bool
        Include entries marked ``optional`` (label tables, stimulus info, ncsnr).

    Returns
    -------
    list of Entry
    """
    manifests = manifests if manifests is not None else load_manifests()
    what = list(what)
    bad = set(what) - {"design", "stimuli", "betas", "rois", "ncsnr"}
    if bad:
        raise ValueError(f"unknown NSD file group(s) {sorted(bad)}; choose from design, stimuli, betas, rois, ncsnr")
    out = []
    for entry in manifests.values():
        if entry.manifest != "nsd" or entry.group not in what:
            continue
        if entry.optional and not include_optional:
            continue
        keys = set(entry.placeholders)
        if not keys:
            out.append(entry)
        elif keys == {"subject"}:
            out.append(entry.expand(subject=subject))
        elif keys == {"subject", "session"}:
            out.extend(entry.expand(subject=subject, session=s) for s in sessions)
        else:
            raise ManifestError(f"{entry.name}: unexpected placeholders {sorted(keys)}")
    return out


# ---------------------------------------------------------------------- pins
def read_pins(cache: Optional[Union[str, Path]] = None) -> dict:
    """The trust-on-first-use pins: ``{pin_key: {"sha256", "size", "url", "pinned_at"}}``."""
    path = (Path(cache) if cache is not None else cache_dir()) / PINS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FetchError(f"the pin file {path} is unreadable ({exc}); fix or delete it") from exc


def _write_pins(pins: dict, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / PINS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(pins, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def _pin(entry: Entry, path: Path, cache: Path, sha: Optional[str] = None) -> str:
    sha = sha or pooch.file_hash(str(path), alg="sha256")
    pins = read_pins(cache)
    pins[entry.pin_key] = {
        "sha256": sha, "size": path.stat().st_size, "url": entry.url,
        "pinned_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_pins(pins, cache)
    log.info("pinned %s: sha256 %s", entry.label, sha)
    return sha


def forget_pin(entry: Union[str, Entry], cache: Optional[Union[str, Path]] = None, **params) -> bool:
    """Remove the pin of a file (after it changed upstream on purpose).

    Returns
    -------
    bool
        Whether a pin was removed.
    """
    entry = _as_entry(entry, params)
    cache = Path(cache) if cache is not None else cache_dir()
    pins = read_pins(cache)
    if entry.pin_key not in pins:
        return False
    del pins[entry.pin_key]
    _write_pins(pins, cache)
    return True


def forget_pin_command(entry: Entry) -> str:
    """The ``braincorl-lite fetch forget-pin ...`` command that removes the pin of an (expanded) entry."""
    args = "".join(f" --{k} {v}" for k, v in sorted(entry.params.items()))
    return f"braincorl-lite fetch forget-pin {entry.name}{args}"


# ---------------------------------------------------------------------- checking
def fetch_command(entry: Entry) -> str:
    """The ``braincorl-lite fetch ...`` command that downloads an (expanded) entry."""
    p = entry.params
    if entry.manifest == "nsd":
        cmd = "braincorl-lite fetch nsd"
        if "subject" in p:
            cmd += f" --subject {p['subject']}"
        if "session" in p:
            cmd += f" --sessions {p['session']}"
        return cmd + f" --what {entry.group}"
    oc = entry.extra.get("open_clip")
    if oc:
        return f"braincorl-lite fetch clip --model {oc['model']} --pretrained {oc['pretrained']}"
    return f"braincorl_lite.fetch.locate({entry.name!r}, download=True)"


def verify_file(entry: Entry, path: Union[str, Path], cache: Optional[Union[str, Path]] = None,
                pin_if_unknown: bool = True) -> str:
    """Check a local file against the manifest's sha256 or its pin.

    A file with neither (placed by hand, never downloaded here) is pinned now when
    ``pin_if_unknown`` is true.

    Returns
    -------
    str
        The file's sha256.

    Raises
    ------
    HashMismatchError
        When the size or the sha256 differs.
    """
    path = Path(path)
    cache = Path(cache) if cache is not None else cache_dir()
    pin = read_pins(cache).get(entry.pin_key)
    expected = entry.sha256 or (pin or {}).get("sha256")
    size = entry.size_bytes or (pin or {}).get("size")
    source = "the manifest" if entry.sha256 else f"its pin of {pin['pinned_at']}" if pin else None
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise HashMismatchError(
            f"{entry.label}: {path} has {actual_size} bytes but {source or 'the manifest'} says {size}. "
            f"The file is truncated or corrupt: delete it and run `{fetch_command(entry)}` again."
        )
    sha = pooch.file_hash(str(path), alg="sha256")
    if expected is None:
        if pin_if_unknown:
            log.warning("%s has no known sha256; pinning the local copy %s (trust on first use)", entry.label, path)
            _pin(entry, path, cache, sha)
        return sha
    if sha != expected:
        raise HashMismatchError(
            f"{entry.label}: {path} has sha256 {sha} but {source} expects {expected}. "
            f"The file is corrupt or changed upstream. Delete it and run `{fetch_command(entry)}` again; "
            f"if the file changed upstream on purpose, {_changed_upstream_advice(entry)}."
        )
    return sha


def _changed_upstream_advice(entry: Entry) -> str:
    if entry.sha256:
        return f"update the sha256 of {entry.name} in data_manifests/{entry.manifest}.yaml"
    return f"forget its pin with `{forget_pin_command(entry)}` and fetch it again"


def _as_entry(entry: Union[str, Entry], params: dict) -> Entry:
    if isinstance(entry, Entry):
        if params:
            return entry.expand(**params)
        if entry.is_template:
            raise ValueError(f"{entry.name} is a template: give {sorted(entry.placeholders)}")
        return entry
    return get_entry(entry, **params)


def _check_url(entry: Entry) -> None:
    parsed = urlparse(entry.url)
    if parsed.scheme == "https":
        return
    if parsed.scheme == "http" and parsed.hostname in _LOOPBACK:
        return  # a local mirror or test server on this machine
    raise FetchError(f"{entry.label}: refusing to download from {entry.url!r}: only https:// addresses are allowed")


# ---------------------------------------------------------------------- downloading
class ResumableDownloader:
    """A pooch downloader that resumes interrupted transfers and shows a ``tqdm`` bar.

    The bytes received so far are kept in a hidden ``.part`` file next to the target; a later
    call asks the server for the rest with an HTTP ``Range`` request and appends it (servers that
    ignore ranges simply send the whole file again).

    Parameters
    ----------
    progressbar : bool
        Show a progress bar on stderr.
    timeout : float
        Seconds to wait for the server to answer or send data.
    chunk_size : int
        Bytes read at a time.
    """

    def __init__(self, progressbar: bool = True, timeout: float = 60.0, chunk_size: int = 1 << 20):
        self.progressbar = progressbar
        self.timeout = timeout
        self.chunk_size = chunk_size

    @staticmethod
    def part_path(url: str, folder: Union[str, Path]) -> Path:
        """Where the partial download of ``url`` is kept."""
        digest = hashlib.sha1(url.encode()).hexdigest()[:12]
        name = Path(urlparse(url).path).name or "download"
        return Path(folder) / f".{name}.{digest}.part"

    def __call__(self, url, output_file, pooch_obj=None, check_only=False):
        import requests
        from tqdm.auto import tqdm

        if check_only:
            resp = requests.head(url, timeout=self.timeout, allow_redirects=True)
            return resp.status_code == 200
        out = Path(output_file)
        part = self.part_path(url, out.parent)
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True) as resp:
            if have and resp.status_code == 416:
                part.unlink()  # our partial file is not a prefix of the remote file: start over
                return self(url, output_file, pooch_obj)
            resp.raise_for_status()
            resumed = have > 0 and resp.status_code == 206
            start = have if resumed else 0
            length = resp.headers.get("Content-Length")
            total = int(length) + start if length is not None else None
            if resumed:
                log.info("resuming %s at byte %d", url, start)
            with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=Path(urlparse(url).path).name, disable=not self.progressbar, leave=False,
            ) as bar:
                for chunk in resp.iter_content(chunk_size=self.chunk_size):
                    if chunk:
                        fh.write(chunk)
                        bar.update(len(chunk))
        got = part.stat().st_size
        if total is not None and got != total:
            raise requests.exceptions.ConnectionError(
                f"transfer of {url} stopped after {got} of {total} bytes (kept for resuming)"
            )
        os.replace(part, out)


def _usable_folder(folder: Path, cache: Path) -> None:
    """Create ``folder`` (below ``cache``) for a download, or say why it cannot be used.

    Also removes the temporary files that a killed earlier download left there (pooch's
    ``tmpXXXXXXXX``): empty ones (the bytes received are kept in the resumable ``.part`` file) and
    full ones older than an hour (killed while being hashed; younger ones may belong to a
    download running in another process).

    Raises
    ------
    CacheDirError
        A file stands where a folder is needed, or the folder is not writable.
    """
    fix = f"point ${ENV_CACHE} (or --cache-dir) at a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), Path(exc.filename or folder))
        raise CacheDirError(
            f"the cache folder {folder} cannot be created: {blocker} is a file, not a folder. "
            f"Move that file away, or {fix}. (This is a problem of the local disk, not of the network.)"
        ) from exc
    except OSError as exc:
        raise CacheDirError(
            f"cannot create the cache folder {folder} ({exc.strerror or exc}): make {cache} writable, or {fix}. "
            "(This is a problem of the local disk, not of the network.)"
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CacheDirError(
            f"the cache folder {folder} is not writable (read-only disk or missing permission): make it "
            f"writable, or {fix}. (This is a problem of the local disk, not of the network.)"
        )
    for stale in folder.iterdir():
        if not (_POOCH_TMP_RE.match(stale.name) and stale.is_file()):
            continue
        st = stale.stat()
        if st.st_size == 0 or st.st_mtime < time.time() - 3600:
            log.info("removing %s, left behind by an interrupted download", stale)
            stale.unlink(missing_ok=True)


def _retryable(exc: Exception) -> bool:
    """Whether a failed transfer may succeed when tried again (not a 4xx answer)."""
    import requests

    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return True


def _download(entry: Entry, cache: Path, retries: int, progressbar: bool, timeout: float) -> Path:
    import requests

    _check_url(entry)
    pin = read_pins(cache).get(entry.pin_key)
    known = entry.sha256 or (pin or {}).get("sha256")
    root = cache / entry.cache_subdir
    _usable_folder(entry.path(cache).parent, cache)
    registry = {entry.local: f"sha256:{known}" if known else None}
    # pooch itself retries everything, hash mismatches and 404s included: retries are done here
    store = pooch.create(path=root, base_url="", registry=registry, urls={entry.local: entry.url},
                         retry_if_failed=0)
    downloader = ResumableDownloader(progressbar=progressbar, timeout=timeout)
    attempt = 0
    while True:
        try:
            fname = store.fetch(entry.local, downloader=downloader)
            break
        except ValueError as exc:  # pooch's hash mismatch: the same bytes would come again
            raise HashMismatchError(
                f"{entry.label}: the file downloaded from {entry.url} does not have the expected sha256 "
                f"({'manifest' if entry.sha256 else 'pinned on first download'}: {known}). Details: {exc}. "
                "The transfer may have been corrupted (run the command again) or the file changed upstream "
                f"(check, then {_changed_upstream_advice(entry)})."
            ) from exc
        except requests.exceptions.RequestException as exc:
            if not _retryable(exc):
                status = exc.response.status_code
                raise HTTPClientError(
                    f"could not download {entry.label}: the server answered HTTP {status} "
                    f"{exc.response.reason or ''} for {entry.url}. This is not a network problem and "
                    "retrying will not help: the file is missing upstream or access is refused (for NSD, "
                    "check that you accepted the data-use terms and that the file exists; the URL comes "
                    f"from data_manifests/{entry.manifest}.yaml)."
                ) from exc
            if attempt >= retries:
                raise DownloadError(
                    f"could not download {entry.label} from {entry.url} (after {retries} "
                    f"retr{'y' if retries == 1 else 'ies'}): {type(exc).__name__}: {exc}. Check your network "
                    "connection (and proxy settings); an interrupted transfer resumes when you run the command "
                    f"again. You can also download the file by other means and place it at "
                    f"{entry.path(cache)}; it will be checked on first use."
                ) from exc
            attempt += 1
            log.info("download of %s failed (%s); trying again (%d of %d)", entry.label, exc, attempt, retries)
            time.sleep(min(attempt, 10))
        except OSError as exc:  # local: disk full, permissions...
            where = exc.filename or entry.path(cache).parent
            raise CacheDirError(
                f"could not write {entry.label} into the cache: {exc.strerror or exc} ({where}). Free some "
                f"space or fix the permissions, or point ${ENV_CACHE} (or --cache-dir) at another folder. "
                "(This is a problem of the local disk, not of the network.)"
            ) from exc
    path = Path(fname)
    if known is None:
        _pin(entry, path, cache)
    return path


def locate(entry: Union[str, Entry], *, download: bool = False, verify: bool = True,
           cache: Optional[Union[str, Path]] = None, retries: int = DEFAULT_RETRIES,
           progressbar: bool = True, timeout: float = 60.0, **params) -> Path:
    """Path of a manifest file in the cache, checked; downloaded only when asked.

    Parameters
    ----------
    entry : str or Entry
        Entry name (e.g. ``"nsd.expdesign"``) or an :class:`Entry`.
    download : bool
        Download the file when it is not in the cache. Default False: nothing is downloaded
        unless explicitly requested.
    verify : bool
        Check the sha256 (manifest or pin) of a file already in the cache.
    cache : path, optional
        Cache directory (default :func:`cache_dir`).
    retries : int
        Extra download attempts after a transient failure (no connection, time-out, HTTP 5xx);
        hash mismatches and HTTP 4xx answers are never retried.
    progressbar : bool
        Show a ``tqdm`` progress bar while downloading.
    timeout : float
        Network timeout in seconds.
    **params : int
        Placeholder values for template entries.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    MissingDataError
        The file is absent and ``download`` is false.
    DownloadError
        Offline, unreachable or HTTP error (:class:`HTTPClientError` for a 4xx answer).
    CacheDirError
        The cache folder cannot be created or written.
    HashMismatchError
        The file does not match its manifest hash or pin.
    """
    entry = _as_entry(entry, params)
    cache = Path(cache) if cache is not None else cache_dir()
    path = entry.path(cache)
    if path.exists():
        if verify:
            verify_file(entry, path, cache)
        return path
    if not download:
        size = f"{entry.size_bytes / 1e6:.1f} MB" if entry.size_bytes else entry.size_note or "size unknown"
        raise MissingDataError(
            f"{entry.label} is not in the cache (expected at {path}). Nothing is downloaded automatically: "
            f"run `{fetch_command(entry)}` ({size}; source {entry.url}; terms: {entry.licence}), or set "
            f"${ENV_CACHE} to the folder that holds your copy."
        )
    return _download(entry, cache, retries=retries, progressbar=progressbar, timeout=timeout)


def fetch_entries(entries: Iterable[Entry], *, cache: Optional[Union[str, Path]] = None,
                  retries: int = DEFAULT_RETRIES, progressbar: bool = True, verify: bool = True,
                  skip_missing_optional: bool = True) -> list:
    """Download (or check) several entries, one after the other.

    Files already in the cache are verified, not downloaded again, so an interrupted run can
    simply be repeated. An optional entry that fails to download is reported and skipped when
    ``skip_missing_optional`` is true.

    Returns
    -------
    list of pathlib.Path
        Paths of the files now in the cache, in the order given.
    """
    paths = []
    for entry in entries:
        try:
            paths.append(locate(entry, download=True, verify=verify, cache=cache, retries=retries,
                                progressbar=progressbar))
        except DownloadError as exc:
            if entry.optional and skip_missing_optional:
                log.warning("skipping optional file %s: %s", entry.label, exc)
                continue
            raise
    return paths


def describe(entries: Iterable[Entry], cache: Optional[Union[str, Path]] = None) -> str:
    """A human-readable table of entries: present or missing, size, URL.

    Used by ``braincorl-lite fetch ... --dry-run``.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    lines, total, unknown = [], 0, 0
    for e in entries:
        path = e.path(cache)
        state = "present" if path.exists() else "missing"
        if e.size_bytes:
            size = f"{e.size_bytes / 1e6:10.1f} MB"
            if state == "missing":
                total += e.size_bytes
        else:
            size = "         ? MB"
            unknown += state == "missing"
        opt = " (optional)" if e.optional else ""
        lines.append(f"{state:8s} {size}  {e.label}{opt}\n{'':24s}{e.url}\n{'':24s}-> {path}")
        if not e.size_bytes and e.size_note:
            lines.append(f"{'':24s}size: {e.size_note}")
    lines.append(f"to download: {total / 1e6:.1f} MB of known size"
                 + (f" plus {unknown} file(s) of unknown size (see size notes)" if unknown else ""))
    return "\n".join(lines)
