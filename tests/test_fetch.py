"""braincorl_lite.nsd.fetch without the network: a closed port on 127.0.0.1 for the offline case, and
a local HTTP server in a thread for downloads, resuming, retries and hash mismatches."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from braincorl_lite.nsd import cli as cli_real
from braincorl_lite.nsd import fetch
from conftest_real import make_entry

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()
CLOSED_PORT_URL = "http://127.0.0.1:9/nothing/here.bin"  # discard port: nothing listens there


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(fetch.ENV_CACHE, str(path))
    return path


def test_cache_dir_from_environment(cache, monkeypatch):
    assert fetch.cache_dir() == cache.resolve()
    monkeypatch.delenv(fetch.ENV_CACHE)
    assert fetch.cache_dir().name == "braincorl_lite"


def test_nothing_downloads_unless_asked(local_server, cache):
    local_server.files["/a.bin"] = PAYLOAD
    entry = make_entry(local_server.url("/a.bin"), sha256=SHA)
    with pytest.raises(fetch.MissingDataError) as exc:
        fetch.locate(entry)
    msg = str(exc.value)
    assert "test.file" in msg and "/a.bin" in msg and str(entry.path(cache)) in msg
    assert local_server.log == []  # the server was never contacted
    assert not entry.path(cache).exists()


def test_download_known_hash_then_verified_use(local_server, cache):
    local_server.files["/a.bin"] = PAYLOAD
    entry = make_entry(local_server.url("/a.bin"), sha256=SHA, size_bytes=len(PAYLOAD))
    path = fetch.locate(entry, download=True, progressbar=False)
    assert path == entry.path(cache) and path.read_bytes() == PAYLOAD
    assert len(local_server.log) == 1
    assert fetch.locate(entry) == path  # cached: checked, not downloaded again
    assert len(local_server.log) == 1
    assert not list(path.parent.glob(".*part")) and not list(path.parent.glob("tmp*"))
    path.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(fetch.HashMismatchError, match="expects"):
        fetch.locate(entry)


def test_trust_on_first_use_pin(local_server, cache):
    local_server.files["/b.bin"] = PAYLOAD
    entry = make_entry(local_server.url("/b.bin"), sha256=None)
    path = fetch.locate(entry, download=True, progressbar=False)
    pins = json.loads((cache / "pins.json").read_text())
    pin = pins[entry.pin_key]
    assert pin["sha256"] == SHA and pin["size"] == len(PAYLOAD) and pin["url"] == entry.url
    assert fetch.locate(entry) == path
    path.write_bytes(b"x" * len(PAYLOAD))  # same size, other content
    with pytest.raises(fetch.HashMismatchError, match="its pin of first download"):
        fetch.locate(entry)
    # a changed upstream file is refused too, until the pin is removed on purpose
    path.unlink()
    local_server.files["/b.bin"] = PAYLOAD[::-1]
    with pytest.raises(fetch.HashMismatchError, match="pinned on first download") as exc:
        fetch.locate(entry, download=True, progressbar=False, retries=0)
    assert "braincorl-lite fetch forget-pin test.file" in str(exc.value)  # advice a CLI user can follow
    assert not path.exists()
    assert fetch.forget_pin(entry) is True
    assert fetch.locate(entry, download=True, progressbar=False).read_bytes() == PAYLOAD[::-1]


def test_hand_placed_file_is_pinned_on_first_use(cache):
    entry = make_entry(CLOSED_PORT_URL, sha256=None)
    path = entry.path(cache)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"local copy")
    assert fetch.locate(entry) == path
    assert fetch.read_pins(cache)[entry.pin_key]["sha256"] == hashlib.sha256(b"local copy").hexdigest()


def test_hash_mismatch_on_download_leaves_nothing(local_server, cache):
    local_server.files["/c.bin"] = PAYLOAD
    entry = make_entry(local_server.url("/c.bin"), sha256="0" * 64)
    with pytest.raises(fetch.HashMismatchError) as exc:
        fetch.locate(entry, download=True, progressbar=False, retries=0)
    msg = str(exc.value)
    assert "test.file" in msg and entry.url in msg and "0" * 64 in msg
    folder = entry.path(cache).parent
    assert not entry.path(cache).exists()
    assert [p.name for p in folder.iterdir()] == []  # no temporary or partial file left


def test_offline_gives_clear_error(cache):
    entry = make_entry(CLOSED_PORT_URL, sha256=SHA)
    with pytest.raises(fetch.DownloadError) as exc:
        fetch.locate(entry, download=True, progressbar=False, retries=0, timeout=5)
    msg = str(exc.value)
    assert "test.file" in msg and CLOSED_PORT_URL in msg
    assert "network" in msg and str(entry.path(cache)) in msg  # what to do
    assert isinstance(exc.value, ConnectionError)
    assert not entry.path(cache).exists()


def test_http_error_is_retried(local_server, cache):
    local_server.files["/d.bin"] = PAYLOAD
    local_server.fail_next = 1  # first answer: 503
    entry = make_entry(local_server.url("/d.bin"), sha256=SHA)
    path = fetch.locate(entry, download=True, progressbar=False, retries=1)
    assert path.read_bytes() == PAYLOAD
    assert len(local_server.log) == 2


def test_404_fails_after_retries(local_server, cache):
    entry = make_entry(local_server.url("/missing.bin"), sha256=SHA)
    with pytest.raises(fetch.DownloadError, match="404"):
        fetch.locate(entry, download=True, progressbar=False, retries=0)


def test_hash_mismatch_and_4xx_are_not_retried(local_server, cache):
    """Retrying cannot fix a wrong hash or a 404/403: one request each, whatever ``retries`` says."""
    local_server.files["/c.bin"] = PAYLOAD
    wrong = make_entry(local_server.url("/c.bin"), sha256="0" * 64)
    with pytest.raises(fetch.HashMismatchError):
        fetch.locate(wrong, download=True, progressbar=False, retries=3)
    assert len(local_server.log) == 1
    missing = make_entry(local_server.url("/missing.bin"), local="t/m.bin", sha256=SHA)
    with pytest.raises(fetch.HTTPClientError):
        fetch.locate(missing, download=True, progressbar=False, retries=3)
    assert len(local_server.log) == 2
    local_server.fail_next = 1  # a 5xx is still retried
    ok = make_entry(local_server.url("/c.bin"), local="t/ok.bin", sha256=SHA)
    assert fetch.locate(ok, download=True, progressbar=False, retries=3).read_bytes() == PAYLOAD
    assert len(local_server.log) == 4


def test_local_and_4xx_problems_are_not_called_network_problems(local_server, cache, monkeypatch):
    local_server.files["/a.bin"] = PAYLOAD
    # a 404 names the status and the URL, and says it is not the network
    missing = make_entry(local_server.url("/gone.bin"), sha256=SHA)
    with pytest.raises(fetch.HTTPClientError) as exc:
        fetch.locate(missing, download=True, progressbar=False, retries=0)
    msg = str(exc.value)
    assert "HTTP 404" in msg and missing.url in msg and "not a network problem" in msg
    assert "network connection" not in msg
    # the cache path is a file
    blocked = cache.parent / "cache_file"
    blocked.write_text("not a folder")
    entry = make_entry(local_server.url("/a.bin"), sha256=SHA)
    with pytest.raises(fetch.CacheDirError) as exc:
        fetch.locate(entry, download=True, progressbar=False, retries=0, cache=blocked)
    msg = str(exc.value)
    assert f"{blocked} is a file" in msg and fetch.ENV_CACHE in msg and "not of the network" in msg
    assert isinstance(exc.value, OSError) and not isinstance(exc.value, ConnectionError)
    # a read-only cache folder (simulated: the tests may run as root, which can write anywhere)
    real_access = os.access
    monkeypatch.setattr(fetch.os, "access", lambda p, mode: False if str(p).startswith(str(cache)) else real_access(p, mode))
    with pytest.raises(fetch.CacheDirError) as exc:
        fetch.locate(entry, download=True, progressbar=False, retries=0)
    msg = str(exc.value)
    assert str(entry.path(cache).parent) in msg and "not writable" in msg and "network connection" not in msg
    assert local_server.log[-1]["path"] == "/gone.bin"  # neither local problem touched the server


def test_killed_download_leaves_no_temporary_file(local_server, cache):
    """SIGKILL in the middle of a transfer: the next run resumes and leaves only the file."""
    local_server.files["/k.bin"] = PAYLOAD
    local_server.stall_after = 100_000
    entry = make_entry(local_server.url("/k.bin"), sha256=SHA)
    folder = entry.path(cache).parent
    code = (
        "from braincorl_lite.nsd import fetch\n"
        f"e = fetch.Entry(name='test.file', group='design', url={entry.url!r}, local={entry.local!r}, "
        f"sha256={SHA!r}, size_bytes=None, licence='t', description='t', manifest='test', cache_subdir='test')\n"
        "fetch.locate(e, download=True, progressbar=False, retries=0, timeout=60)\n"
    )
    env = {**os.environ, fetch.ENV_CACHE: str(cache)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    part = fetch.ResumableDownloader.part_path(entry.url, folder)
    try:
        deadline = time.monotonic() + 60
        while not part.exists():  # the transfer has begun and now hangs
            assert proc.poll() is None and time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    left = [p.name for p in folder.iterdir() if p.name.startswith("tmp")]
    assert left, "the killed run should have left pooch's temporary file (the case under test)"
    local_server.stall_after = None
    assert fetch.locate(entry, download=True, progressbar=False).read_bytes() == PAYLOAD
    assert sorted(p.name for p in folder.iterdir()) == ["file.bin"]  # no tmp*, no .part


def test_interrupted_download_resumes_with_range_request(local_server, cache):
    local_server.files["/e.bin"] = PAYLOAD
    entry = make_entry(local_server.url("/e.bin"), sha256=SHA)
    folder = entry.path(cache).parent
    folder.mkdir(parents=True)
    part = fetch.ResumableDownloader.part_path(entry.url, folder)
    part.write_bytes(PAYLOAD[:300_000])  # what an interrupted earlier run left behind
    path = fetch.locate(entry, download=True, progressbar=False)
    assert path.read_bytes() == PAYLOAD
    assert local_server.log[-1]["range"] == "bytes=300000-"
    assert not part.exists()


def test_server_without_ranges_restarts_cleanly(local_server, cache):
    local_server.files["/f.bin"] = PAYLOAD
    local_server.ranges = False
    entry = make_entry(local_server.url("/f.bin"), sha256=SHA)
    folder = entry.path(cache).parent
    folder.mkdir(parents=True)
    fetch.ResumableDownloader.part_path(entry.url, folder).write_bytes(b"garbage" * 10)
    assert fetch.locate(entry, download=True, progressbar=False).read_bytes() == PAYLOAD


def test_only_https_or_loopback(cache):
    entry = make_entry("http://example.org/file.bin", sha256=SHA)
    with pytest.raises(fetch.FetchError, match="only https"):
        fetch.locate(entry, download=True, progressbar=False)


def test_fetch_entries_skips_unreachable_optional(local_server, cache):
    local_server.files["/g.bin"] = PAYLOAD
    required = make_entry(local_server.url("/g.bin"), local="t/g.bin", sha256=SHA)
    optional = make_entry(CLOSED_PORT_URL, local="t/opt.bin", sha256=SHA, optional=True)
    paths = fetch.fetch_entries([required, optional], retries=0, progressbar=False)
    assert [p.name for p in paths] == ["g.bin"]


def test_describe_lists_state_and_sizes(local_server, cache):
    entry = make_entry(local_server.url("/h.bin"), sha256=SHA, size_bytes=2_000_000)
    text = fetch.describe([entry])
    assert "missing" in text and "2.0 MB" in text and entry.url in text
    assert local_server.log == []


# ---------------------------------------------------------------------- CLI
def _parser():
    parser = argparse.ArgumentParser(prog="braincorl-lite")
    cli_real.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_fetch_dry_run(cache, capsys):
    args = _parser().parse_args(["fetch", "nsd", "--subject", "1", "--sessions", "1-2", "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "betas_session01.hdf5" in out and "betas_session02.hdf5" in out and "betas_session03" not in out
    assert "nsd_expdesign.mat" in out and "floc-words.nii.gz" in out
    args = _parser().parse_args(["fetch", "clip", "--model", "ViT-B-32", "--pretrained", "openai", "--dry-run"])
    assert args.func(args) == 0
    assert "huggingface.co" in capsys.readouterr().out


def test_cli_fetch_nsd_downloads_through_manifest(local_server, cache, monkeypatch, capsys):
    """The fetch command end to end, with the NSD entries pointed at the local server."""
    real = fetch.load_manifests()
    served = {}
    for name, e in real.items():
        if e.manifest == "nsd":
            url = local_server.url("/" + e.local)
            served[name] = dataclasses.replace(e, url=url)
    monkeypatch.setattr(fetch, "load_manifests", lambda directory=None: {**real, **served})
    for e in fetch.nsd_entries(2, [1, 2], what=("design", "rois", "betas")):
        local_server.files["/" + e.local] = f"content of {e.local}".encode()
    # the design has a manifest hash, which this fake content cannot match: serve no design
    args = _parser().parse_args(["fetch", "nsd", "--subject", "2", "--sessions", "1,2", "--what", "rois,betas",
                                 "--no-progress", "--retries", "0", "--cache-dir", str(cache)])
    assert args.func(args) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 2 + 5 + 4  # betas, ROI volumes, label tables
    pins = fetch.read_pins(cache)
    assert len(pins) == 11
    # second run: nothing downloaded again
    n_requests = len(local_server.log)
    assert args.func(args) == 0
    assert len(local_server.log) == n_requests


def test_cli_fetch_needs_subject(cache, capsys):
    args = _parser().parse_args(["fetch", "nsd", "--what", "betas", "--dry-run"])
    assert args.func(args) == 1
    assert "--subject is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["fetch", "nsd", "--what", "everything"])


def test_cli_fetch_list(capsys):
    args = _parser().parse_args(["fetch", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "nsd.betas_session [subject, session]" in out and "clip.ViT-B-32.openai" in out


def test_cli_forget_pin(cache, capsys):
    """The pin-mismatch advice is a command: ``braincorl-lite fetch forget-pin NAME [--subject] [--session]``."""
    entry = fetch.get_entry("nsd.betas_session", subject=1, session=3)
    path = entry.path(cache)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old release")
    fetch.locate(entry)  # hand-placed: pinned on first use
    path.write_bytes(b"new release")
    with pytest.raises(fetch.HashMismatchError) as exc:
        fetch.locate(entry)
    advice = "braincorl-lite fetch forget-pin nsd.betas_session --session 3 --subject 1"
    assert advice in str(exc.value)
    args = _parser().parse_args(advice.split()[1:] + ["--cache-dir", str(cache)])
    assert args.func(args) == 0
    assert entry.pin_key not in fetch.read_pins(cache)
    assert "forgot the pin" in capsys.readouterr().out
    assert fetch.locate(entry) == path  # the new file is pinned now
    args = _parser().parse_args(["fetch", "forget-pin", "nsd.betas_session", "--subject", "1"])
    assert args.func(args) == 1
    assert "missing ['session']" in capsys.readouterr().err
    args = _parser().parse_args(["fetch", "forget-pin", "nsd.nothing"])
    assert args.func(args) == 1
    assert "no manifest entry named 'nsd.nothing'" in capsys.readouterr().err
