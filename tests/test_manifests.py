"""Every manifest in data_manifests/ follows the schema of data_manifests/README.md and expands its
templates. The schema is checked here, once, instead of at every load."""

from __future__ import annotations

import string
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from braincorl_lite.nsd import fetch
from braincorl_lite.nsd.design import FLOC_FILES, NSD_SESSIONS_COMPLETED

MANIFEST_DIR = Path(__file__).resolve().parents[1] / "data_manifests"
FILES = sorted(MANIFEST_DIR.glob("*.yaml"))
GROUPS = ("design", "stimuli", "betas", "rois", "ncsnr", "weights")
REQUIRED = ("name", "group", "url", "local", "size_bytes", "sha256", "licence", "description")
OPTIONAL = ("size_note", "sha256_note", "terms_url", "optional", "placeholders", "open_clip")
TOP_REQUIRED = ("schema_version", "manifest", "cache_subdir", "files")
TOP_OPTIONAL = ("title", "homepage", "notes", "defaults")


def _fields(template: str) -> set:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _entry_problems(raw, defaults: dict, where: str) -> list:
    if not isinstance(raw, dict):
        return [f"{where}: each entry must be a mapping"]
    item = {**defaults, **raw}
    where = f"{where} entry {item.get('name', '?')!r}"
    problems = [f"{where}: missing field '{k}'" for k in REQUIRED if k not in item]
    unknown = set(raw) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        problems.append(f"{where}: unknown field(s) {sorted(unknown)} (typo?)")
    if problems:
        return problems
    if not all(c.isalnum() or c in "_.-" for c in str(item["name"])):
        problems.append(f"{where}: bad name")
    if item["group"] not in GROUPS:
        problems.append(f"{where}: group must be one of {GROUPS}")
    url, local = str(item["url"]), str(item["local"])
    if urlparse(url.replace("{", "").replace("}", "")).scheme != "https":
        problems.append(f"{where}: url must be an https:// address, got {url!r}")
    if local.startswith("/") or ".." in Path(local).parts or "\\" in local:
        problems.append(f"{where}: local must be a relative path without '..', got {local!r}")
    declared = item.get("placeholders") or {}
    if _fields(url) != set(declared) or _fields(local) != set(declared):
        problems.append(f"{where}: placeholders {sorted(declared)} must be exactly those of url and local")
    for key, rng in declared.items():
        if not (isinstance(rng, dict) and isinstance(rng.get("min"), int) and isinstance(rng.get("max"), int)
                and rng["min"] <= rng["max"]):
            problems.append(f"{where}: placeholder {key!r} needs integer min <= max")
    size, sha = item["size_bytes"], item["sha256"]
    if size is None and not item.get("size_note"):
        problems.append(f"{where}: size_bytes is null, so size_note must say roughly how large it is")
    elif size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        problems.append(f"{where}: size_bytes must be a positive integer or null")
    if sha is None and not item.get("sha256_note"):
        problems.append(f"{where}: sha256 is null, so sha256_note must say why")
    elif sha is not None and not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= set("0123456789abcdef")):
        problems.append(f"{where}: sha256 must be 64 lowercase hex digits or null")
    for key in ("licence", "description"):
        if not isinstance(item[key], str) or not item[key].strip():
            problems.append(f"{where}: {key} must be a non-empty string")
    if "terms_url" in item and urlparse(str(item["terms_url"])).scheme != "https":
        problems.append(f"{where}: terms_url must be an https:// address")
    if not isinstance(item.get("optional", False), bool):
        problems.append(f"{where}: optional must be true or false")
    oc = item.get("open_clip")
    if item["group"] == "weights" and not (isinstance(oc, dict) and {"model", "pretrained", "quick_gelu"} <= set(oc)):
        problems.append(f"{where}: weights entries need open_clip: {{model, pretrained, quick_gelu}}")
    return problems


def schema_problems(data, source: str) -> list:
    """The schema violations of a parsed manifest (empty when it is valid)."""
    if not isinstance(data, dict):
        return [f"{source}: the manifest must be a mapping"]
    problems = [f"{source}: missing top-level field '{k}'" for k in TOP_REQUIRED if k not in data]
    unknown = set(data) - set(TOP_REQUIRED) - set(TOP_OPTIONAL)
    if unknown:
        problems.append(f"{source}: unknown top-level field(s) {sorted(unknown)}")
    if problems:
        return problems
    if data["schema_version"] != 1:
        problems.append(f"{source}: schema_version must be 1")
    if not isinstance(data["files"], list) or not data["files"]:
        return problems + [f"{source}: files must be a non-empty list"]
    seen = {"name": set(), "url": set(), "local": set()}
    for i, raw in enumerate(data["files"]):
        problems += _entry_problems(raw, data.get("defaults") or {}, f"{source} files[{i}]")
        for key, values in seen.items():
            if isinstance(raw, dict) and raw.get(key) in values:
                problems.append(f"{source}: duplicate {key} {raw[key]!r}")
            values.add(raw.get(key) if isinstance(raw, dict) else None)
    return problems


def test_manifest_folder_found():
    assert fetch.manifest_dir() == MANIFEST_DIR
    assert {p.name for p in FILES} >= {"nsd.yaml", "clip.yaml"}
    assert (MANIFEST_DIR / "README.md").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_manifest_is_valid(path):
    data = yaml.safe_load(path.read_text())
    assert schema_problems(data, path.name) == []
    entries = [e for e in fetch.load_manifests(MANIFEST_DIR).values() if e.manifest == data["manifest"]]
    assert len(entries) == len(data["files"])
    for e in entries:
        assert e.licence and e.description and e.cache_subdir == data["cache_subdir"]
        assert e.size_bytes is not None or e.size_note


def test_no_duplicates_across_manifests():
    raw = [f for p in FILES for f in yaml.safe_load(p.read_text())["files"]]
    entries = list(fetch.load_manifests(MANIFEST_DIR).values())
    assert len(entries) == len(raw)  # no name appears twice
    assert len({e.url for e in entries}) == len(entries)
    assert len({(e.cache_subdir, e.local) for e in entries}) == len(entries)


def test_placeholder_expansion():
    e = fetch.get_entry("nsd.betas_session", subject=3, session=7)
    assert e.url == ("https://natural-scenes-dataset.s3.amazonaws.com/nsddata_betas/ppdata/subj03/func1pt8mm/"
                     "betas_fithrf_GLMdenoise_RR/betas_session07.hdf5")
    assert e.local.endswith("subj03/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session07.hdf5")
    assert e.params == {"subject": 3, "session": 7} and not e.is_template
    assert e.label == "nsd.betas_session(session=7, subject=3)"
    roi = fetch.get_entry("nsd.roi.floc-faces", subject=8)
    assert roi.url.endswith("nsddata/ppdata/subj08/func1pt8mm/roi/floc-faces.nii.gz")
    assert fetch.get_entry("nsd.ncsnr", subject=1).url.endswith(
        "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/ncsnr.nii.gz")


def test_placeholder_errors():
    m = fetch.load_manifests()
    with pytest.raises(ValueError, match="outside the allowed range 1..8"):
        fetch.get_entry("nsd.roi.nsdgeneral", m, subject=9)
    with pytest.raises(ValueError, match="missing"):
        fetch.get_entry("nsd.betas_session", m, subject=1)
    with pytest.raises(ValueError, match="unexpected"):
        fetch.get_entry("nsd.roi.nsdgeneral", m, subject=1, session=2)
    with pytest.raises(ValueError, match="integer"):
        fetch.get_entry("nsd.roi.nsdgeneral", m, subject="1")
    with pytest.raises(ValueError, match="template"):
        m["nsd.betas_session"].path()
    with pytest.raises(KeyError, match="no manifest entry"):
        fetch.get_entry("nsd.nothing", m)


def test_every_subject_and_session_expands_to_distinct_https_urls():
    urls = set()
    for subject, n in NSD_SESSIONS_COMPLETED.items():
        for e in fetch.nsd_entries(subject, range(1, n + 1), what=("design", "betas", "rois", "ncsnr")):
            assert not e.is_template and e.url.startswith("https://natural-scenes-dataset.s3.amazonaws.com/")
            assert "{" not in e.url and "{" not in e.local
            urls.add(e.url)
    n_betas = sum(NSD_SESSIONS_COMPLETED.values())
    per_subject = 1 + len(FLOC_FILES) * 2 + 1  # nsdgeneral, floc volumes + label tables, ncsnr
    assert len(urls) == n_betas + 8 * per_subject + 2  # + design and stimulus info


def test_nsd_manifest_covers_the_real_path():
    m = fetch.load_manifests()
    for name in ["nsd.expdesign", "nsd.stim_info", "nsd.stimuli", "nsd.betas_session", "nsd.ncsnr",
                 "nsd.roi.nsdgeneral"] + [f"nsd.roi.{f}" for f in FLOC_FILES]:
        assert name in m, name
    assert m["nsd.expdesign"].sha256 == "4cf4901ecf736c525ce534c4466030ec8d13c2fc0c8b31ddf86f17c55faadf89"
    assert m["nsd.expdesign"].size_bytes == 261803
    notes = " ".join(yaml.safe_load((MANIFEST_DIR / "nsd.yaml").read_text())["notes"])
    assert "food" in notes.lower()


def test_clip_entries():
    for tag, gelu in (("openai", True), ("laion2b_s34b_b79k", False)):
        e = fetch.clip_entry("ViT-B-32", tag)
        assert e.open_clip["quick_gelu"] is gelu and e.open_clip["embed_dim"] == 512
        assert e.group == "weights" and e.url.startswith("https://huggingface.co/")
    with pytest.raises(KeyError, match="known"):
        fetch.clip_entry("ViT-B-32", "nonexistent")


def test_schema_check_catches_mistakes():
    good = yaml.safe_load((MANIFEST_DIR / "clip.yaml").read_text())

    def problems(mutate):
        data = yaml.safe_load(yaml.safe_dump(good))
        mutate(data)
        return " ".join(schema_problems(data, "x.yaml"))

    assert problems(lambda d: None) == ""
    assert "https" in problems(lambda d: d["files"][0].update(url="http://example.org/a.bin"))
    assert "sha256" in problems(lambda d: d["files"][0].update(sha256="abc"))
    assert "sha256_note" in problems(lambda d: d["files"][0].pop("sha256_note"))
    assert "duplicate name" in problems(lambda d: d["files"][1].update(name=d["files"][0]["name"]))
    assert "unknown field" in problems(lambda d: d["files"][0].update(sha265=None))
    assert "placeholders" in problems(lambda d: d["files"][0].update(url=d["files"][0]["url"] + "?s={subject}"))
    assert "relative" in problems(lambda d: d["files"][0].update(local="/etc/passwd"))
    assert "missing field 'licence'" in problems(lambda d: d["files"][0].pop("licence"))
    assert "schema_version" in problems(lambda d: d.update(schema_version=2))
    assert "non-empty list" in problems(lambda d: d.update(files=[]))
    assert "open_clip" in problems(lambda d: d["files"][0].pop("open_clip"))


def test_missing_or_unreadable_manifests_raise(tmp_path):
    with pytest.raises(fetch.ManifestError, match="no manifests"):
        fetch.load_manifests(tmp_path / "empty")
    (tmp_path / "bad.yaml").write_text("schema_version: 1\nmanifest: bad\n")
    with pytest.raises(fetch.ManifestError, match="cannot read the manifest"):
        fetch.load_manifests(tmp_path)
