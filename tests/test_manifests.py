"""Every manifest in data_manifests/ parses, follows the schema, and expands its templates."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from braincorl_lite import fetch
from braincorl_lite.nsd import FLOC_FILES, NSD_SESSIONS_COMPLETED

MANIFEST_DIR = Path(__file__).resolve().parents[1] / "data_manifests"
FILES = sorted(MANIFEST_DIR.glob("*.yaml"))


def test_manifest_folder_found():
    assert fetch.manifest_dir() == MANIFEST_DIR
    assert {p.name for p in FILES} >= {"nsd.yaml", "clip.yaml"}
    assert (MANIFEST_DIR / "README.md").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_manifest_is_valid(path):
    data = yaml.safe_load(path.read_text())
    assert fetch.validate_manifest(data, path.name) == []
    entries = fetch.load_manifest(path)
    assert entries
    for e in entries:
        assert urlparse(e.url.replace("{", "").replace("}", "")).scheme == "https"
        assert e.licence and e.description
        if e.sha256 is None:
            assert e.sha256_note, e.name
        else:
            assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0
        if e.size_bytes is None:
            assert e.size_note, e.name
        if e.terms_url:
            assert e.terms_url.startswith("https://")


def test_no_duplicates_across_manifests():
    entries = list(fetch.load_manifests(MANIFEST_DIR).values())
    names = [e.name for e in entries]
    urls = [e.url for e in entries]
    locals_ = [(e.cache_subdir, e.local) for e in entries]
    assert len(set(names)) == len(names)
    assert len(set(urls)) == len(urls)
    assert len(set(locals_)) == len(locals_)


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
        oc = e.extra["open_clip"]
        assert oc["quick_gelu"] is gelu and oc["embed_dim"] == 512
        assert e.group == "weights" and e.url.startswith("https://huggingface.co/")
    with pytest.raises(KeyError, match="known"):
        fetch.clip_entry("ViT-B-32", "nonexistent")


def test_validator_catches_mistakes():
    good = yaml.safe_load((MANIFEST_DIR / "clip.yaml").read_text())

    def problems(mutate):
        data = yaml.safe_load(yaml.safe_dump(good))
        mutate(data)
        return " ".join(fetch.validate_manifest(data, "x.yaml"))

    assert "https" in problems(lambda d: d["files"][0].update(url="http://example.org/a.bin"))
    assert "sha256" in problems(lambda d: d["files"][0].update(sha256="abc"))
    assert "sha256_note" in problems(lambda d: d["files"][0].pop("sha256_note"))
    assert "duplicate name" in problems(lambda d: d["files"][1].update(name=d["files"][0]["name"]))
    assert "unknown field" in problems(lambda d: d["files"][0].update(sha265=None))
    assert "placeholders" in problems(lambda d: d["files"][0].update(url=d["files"][0]["url"] + "?s={subject}"))
    assert "relative" in problems(lambda d: d["files"][0].update(local="/etc/passwd"))
    assert "missing field 'licence'" in problems(lambda d: d["files"][0].pop("licence"))
    assert "schema_version" in problems(lambda d: d.update(schema_version=2))


def test_invalid_manifest_file_raises(tmp_path):
    (tmp_path / "bad.yaml").write_text("schema_version: 1\nmanifest: bad\ncache_subdir: bad\nfiles: []\n")
    with pytest.raises(fetch.ManifestError, match="non-empty list"):
        fetch.load_manifests(tmp_path)
    with pytest.raises(fetch.ManifestError, match="no manifests"):
        fetch.load_manifests(tmp_path / "empty")
