"""braincorl_lite.nsd.features: NSD-format stimulus files and image folders, resumable extraction,
feature files, and open_clip loading from local checkpoints (a tiny random config, no download).

Tests marked ``slow`` import open_clip/torch (about 10 s once per session) and run the tiny model.
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest

from braincorl_lite.errors import BraInCoRLError, ConfigError
from braincorl_lite.nsd import cli as cli_real
from braincorl_lite.nsd import fetch
from braincorl_lite.nsd.design import subject_image_ids
from braincorl_lite.nsd.features import (
    FeaturesInputError, OutputLockedError, extract_folder_features, extract_nsd_features, load_clip, load_features,
    save_features,
)
from conftest_real import FakeEncoder, make_design, make_stimuli_hdf5


@pytest.fixture(scope="module")
def stimuli(tmp_path_factory):
    return make_stimuli_hdf5(tmp_path_factory.mktemp("stim") / "nsd_stimuli.hdf5", n=12)


def _images(path):
    with h5py.File(path, "r") as fh:
        return fh["imgBrick"][()]


@pytest.fixture
def image_dir(tmp_path, stimuli):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    imgs = _images(stimuli)
    for i in range(5):
        Image.fromarray(imgs[i]).resize((200, 150)).save(folder / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image")
    return folder


# ---------------------------------------------------------------------- extraction (no torch)
def test_extract_nsd_features(stimuli, tmp_path):
    enc = FakeEncoder()
    out = extract_nsd_features(stimuli, tmp_path / "f.h5", encoder=enc, batch_size=5, chunk_size=4, progress=False)
    ids, feats, attrs = load_features(out)
    np.testing.assert_array_equal(ids, np.arange(12))
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(feats, FakeEncoder().encode_images(list(_images(stimuli))), atol=1e-6)
    assert attrs["model"] == "fake" and attrs["pretrained"] == "none" and attrs["source_kind"] == "nsd-hdf5"
    assert attrs["complete"] and attrs["normalised"] and attrs["embed_dim"] == 8
    assert not (tmp_path / "f.h5.partial").exists()


def test_extract_subset_of_ids(stimuli, tmp_path):
    out = extract_nsd_features(stimuli, tmp_path / "f.h5", encoder=FakeEncoder(), image_ids=[9, 2, 2, 5],
                               progress=False)
    ids, feats, _ = load_features(out)
    np.testing.assert_array_equal(ids, [2, 5, 9])
    np.testing.assert_allclose(feats, FakeEncoder().encode_images(list(_images(stimuli)[[2, 5, 9]])), atol=1e-6)
    with pytest.raises(ValueError, match="0..11"):
        extract_nsd_features(stimuli, tmp_path / "g.h5", encoder=FakeEncoder(), image_ids=[12], progress=False)


def test_resume_after_interruption(stimuli, tmp_path):
    out = tmp_path / "f.h5"
    first = FakeEncoder()
    assert extract_nsd_features(stimuli, out, encoder=first, chunk_size=4, max_chunks=1, progress=False) is None
    assert first.images_seen == 4 and not out.exists()
    with h5py.File(tmp_path / "f.h5.partial", "r") as fh:
        assert fh["done"][()].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="unfinished"):
        load_features(tmp_path / "f.h5.partial")
    with pytest.raises(FileNotFoundError, match="unfinished extraction"):
        load_features(out)
    second = FakeEncoder()
    assert extract_nsd_features(stimuli, out, encoder=second, chunk_size=4, progress=False) == out
    assert second.images_seen == 8  # only the chunks not done before
    whole = extract_nsd_features(stimuli, tmp_path / "w.h5", encoder=FakeEncoder(), chunk_size=4, progress=False)
    np.testing.assert_array_equal(load_features(out)[1], load_features(whole)[1])
    third = FakeEncoder()  # already complete: nothing recomputed
    assert extract_nsd_features(stimuli, out, encoder=third, chunk_size=4, progress=False) == out
    assert third.images_seen == 0


def test_resume_refuses_other_settings(stimuli, tmp_path):
    out = tmp_path / "f.h5"
    extract_nsd_features(stimuli, out, encoder=FakeEncoder(), chunk_size=4, max_chunks=1, progress=False)
    with pytest.raises(FileExistsError, match="chunk_size"):
        extract_nsd_features(stimuli, out, encoder=FakeEncoder(), chunk_size=5, progress=False)
    assert extract_nsd_features(stimuli, out, encoder=FakeEncoder(), chunk_size=5, overwrite=True,
                                progress=False) == out


def test_bad_stimuli_files(tmp_path):
    with h5py.File(tmp_path / "a.hdf5", "w") as fh:
        fh.create_dataset("images", data=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no dataset 'imgBrick'"):
        extract_nsd_features(tmp_path / "a.hdf5", tmp_path / "o.h5", encoder=FakeEncoder(), progress=False)
    with h5py.File(tmp_path / "b.hdf5", "w") as fh:
        fh.create_dataset("imgBrick", data=np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        extract_nsd_features(tmp_path / "b.hdf5", tmp_path / "o.h5", encoder=FakeEncoder(), progress=False)
    good = make_stimuli_hdf5(tmp_path / "c.hdf5", n=3, size=64)
    data = good.read_bytes()
    (tmp_path / "d.hdf5").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated"):
        extract_nsd_features(tmp_path / "d.hdf5", tmp_path / "o.h5", encoder=FakeEncoder(), progress=False)
    assert not (tmp_path / "o.h5").exists()


def test_extract_folder(image_dir, tmp_path):
    out = extract_folder_features(image_dir, tmp_path / "f.h5", encoder=FakeEncoder(), chunk_size=2, progress=False)
    ids, feats, attrs = load_features(out)
    np.testing.assert_array_equal(ids, np.arange(5))
    with h5py.File(out, "r") as fh:
        names = [n.decode() if isinstance(n, bytes) else n for n in fh["names"][()]]
    assert names == [f"img_{i:02d}.{'png' if i % 2 else 'jpg'}" for i in range(5)]
    assert attrs["source_kind"] == "images-dir"


def test_corrupt_image_gives_clear_error(image_dir, tmp_path):
    (image_dir / "img_03.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    out = tmp_path / "f.h5"
    with pytest.raises(ValueError, match="cannot read image .*img_03.png"):
        extract_folder_features(image_dir, out, encoder=FakeEncoder(), chunk_size=2, progress=False)
    assert not out.exists()  # only the resumable .partial remains, with the first chunk done
    with h5py.File(tmp_path / "f.h5.partial", "r") as fh:
        assert fh["done"][()].tolist() == [True, False, False]


def test_existing_non_hdf5_out_is_named(stimuli, tmp_path):
    out = tmp_path / "features.h5"
    out.write_text("my notes, not features")
    with pytest.raises(FeaturesInputError) as exc:
        extract_nsd_features(stimuli, out, encoder=FakeEncoder(), progress=False)
    msg = str(exc.value)
    assert str(out) in msg and "not a features file" in msg and "--overwrite" in msg
    assert out.read_text() == "my notes, not features"  # left alone


def test_concurrent_run_on_same_output_is_refused(stimuli, tmp_path):
    """A second run writing the same --out while the first is busy is refused (not told to delete)."""
    out = tmp_path / "f.h5"
    seen = {}

    class Busy(FakeEncoder):
        def encode_images(self, images, batch_size=64):
            if not seen:  # while the first run is working, a second one starts
                try:
                    extract_nsd_features(stimuli, out, encoder=FakeEncoder(), chunk_size=4, progress=False)
                    seen["second"] = "ran"
                except Exception as exc:  # noqa: BLE001 - the type is checked below
                    seen["second"] = exc
            return super().encode_images(images, batch_size)

    assert extract_nsd_features(stimuli, out, encoder=Busy(), chunk_size=4, progress=False) == out
    err = seen["second"]
    assert isinstance(err, OutputLockedError) and isinstance(err, BraInCoRLError)
    assert str(out) in str(err) and "another extract-features run" in str(err) and "delete it" not in str(err)
    np.testing.assert_allclose(load_features(out)[1], FakeEncoder().encode_images(list(_images(stimuli))), atol=1e-6)
    assert not (tmp_path / "f.h5.lock").exists()
    # once the first run is over, the output is free again
    assert extract_nsd_features(stimuli, out, encoder=FakeEncoder(), chunk_size=4, progress=False) == out


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        extract_folder_features(tmp_path / "empty", tmp_path / "f.h5", encoder=FakeEncoder(), progress=False)


def test_feature_files_npz_and_checks(tmp_path):
    feats = np.eye(4, 6, dtype=np.float32)
    np.savez(tmp_path / "f.npz", image_ids=np.array([3, 1, 2, 0]), features=feats)
    ids, got, _ = load_features(tmp_path / "f.npz")
    assert ids.tolist() == [3, 1, 2, 0] and np.array_equal(got, feats)
    np.savez(tmp_path / "bad.npz", image_ids=np.arange(4), features=2 * feats)
    with pytest.raises(ValueError, match="unit-norm"):
        load_features(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="unit-norm"):
        save_features(tmp_path / "x.h5", np.arange(4), 2 * feats)
    p = save_features(tmp_path / "x.h5", np.arange(4), feats, attrs={"model": "m"})
    assert load_features(p)[2]["model"] == "m"


def test_subject_image_ids(tmp_path):
    design = make_design(tmp_path / "nsd_expdesign.mat")
    ids = subject_image_ids(tmp_path / "nsd_expdesign.mat", 2)
    np.testing.assert_array_equal(ids, np.sort(design["subjectim"][1] - 1))
    with pytest.raises(ValueError, match="1..8"):
        subject_image_ids(tmp_path / "nsd_expdesign.mat", 9)


def test_weights_are_never_fetched_implicitly(monkeypatch, tmp_path):
    monkeypatch.setenv(fetch.ENV_CACHE, str(tmp_path / "cache"))
    with pytest.raises(fetch.MissingDataError, match="fetch clip --model ViT-B-32 --pretrained openai"):
        load_clip("ViT-B-32", "openai")
    with pytest.raises(KeyError, match="no CLIP weights"):
        load_clip("ViT-B-32", "some-other-tag")


# ---------------------------------------------------------------------- open_clip (tiny random model)
@pytest.mark.slow
def test_tiny_clip_images_and_text(tiny_clip_model, stimuli):
    import torch

    torch.manual_seed(0)
    enc = load_clip(tiny_clip_model, None, device="cpu")
    assert enc.embed_dim == 16 and str(enc.device) == "cpu"
    imgs = list(_images(stimuli)[:3])
    f = enc.encode_images(imgs, batch_size=2)
    assert f.shape == (3, 16) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(imgs), f, atol=1e-5)  # deterministic (eval mode)
    t = enc.encode_text(["a photo of a face", "a photo of a house", "food"])
    assert t.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    from braincorl_lite.nsd.features import encode_text

    np.testing.assert_allclose(encode_text("food", encoder=enc)[0], t[2], atol=1e-6)


@pytest.mark.slow
def test_tiny_clip_from_checkpoint_file(tiny_clip_model, stimuli, tmp_path):
    import torch

    torch.manual_seed(1)
    ref = load_clip(tiny_clip_model, None, device="cpu")
    ckpt = tmp_path / "tiny.bin"
    torch.save(ref.model.state_dict(), ckpt)
    enc = load_clip(tiny_clip_model, None, weights=ckpt, device="cpu")
    assert enc.pretrained == "file:tiny.bin" and len(enc.weights_sha256) == 64
    imgs = list(_images(stimuli)[:2])
    np.testing.assert_allclose(enc.encode_images(imgs), ref.encode_images(imgs), atol=1e-6)


@pytest.mark.slow
def test_tiny_clip_weights_through_manifest(tiny_clip_model, local_server, tmp_path, monkeypatch):
    """Weights come from a manifest entry via fetch (here served from 127.0.0.1) and are pinned."""
    import torch

    torch.manual_seed(2)
    ref = load_clip(tiny_clip_model, None, device="cpu")
    ckpt = tmp_path / "tiny.bin"
    torch.save(ref.model.state_dict(), ckpt)
    local_server.files["/tiny.bin"] = ckpt.read_bytes()
    entry = fetch.Entry(name="clip.tiny.test", group="weights", url=local_server.url("/tiny.bin"),
                        local="tiny/test/model.bin", sha256=None, size_bytes=None, licence="test",
                        description="tiny", manifest="clip", cache_subdir="weights",
                        open_clip={"model": tiny_clip_model, "pretrained": "test", "quick_gelu": False})
    real = fetch.load_manifests()
    monkeypatch.setattr(fetch, "load_manifests", lambda directory=None: {**real, entry.name: entry})
    monkeypatch.setenv(fetch.ENV_CACHE, str(tmp_path / "cache"))
    with pytest.raises(fetch.MissingDataError):
        load_clip(tiny_clip_model, "test", device="cpu")
    assert local_server.log == []
    enc = load_clip(tiny_clip_model, "test", device="cpu", download=True)
    assert enc.pretrained == "test" and enc.weights_sha256 == fetch.read_pins()[entry.pin_key]["sha256"]
    imgs = [np.full((64, 64, 3), 128, dtype=np.uint8)]
    np.testing.assert_allclose(enc.encode_images(imgs), ref.encode_images(imgs), atol=1e-6)


@pytest.mark.slow
def test_tiny_clip_nsd_extraction_and_cli(tiny_clip_model, stimuli, image_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="braincorl-lite")
    cli_real.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "nsd.h5"
    args = parser.parse_args(["extract-features", "--source", "nsd-hdf5", str(stimuli), "--out", str(out),
                              "--model", tiny_clip_model, "--pretrained", "none", "--batch-size", "4",
                              "--chunk-size", "5", "--device", "cpu", "--no-progress"])
    assert args.func(args) == 0
    ids, feats, attrs = load_features(out)
    assert feats.shape == (12, 16) and attrs["model"] == tiny_clip_model and attrs["pretrained"] == "none"
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    out2 = tmp_path / "dir.h5"
    args = parser.parse_args(["extract-features", "--images-dir", str(image_dir), "--out", str(out2),
                              "--model", tiny_clip_model, "--pretrained", "none", "--device", "cpu",
                              "--no-progress"])
    assert args.func(args) == 0
    assert load_features(out2)[1].shape == (5, 16)
    assert "saved" in capsys.readouterr().out
    bad = parser.parse_args(["extract-features", "--source", "folder", str(image_dir), "--out", str(out2),
                             "--model", tiny_clip_model, "--pretrained", "none", "--device", "cpu"])
    assert bad.func(bad) == 1
    assert "nsd-hdf5" in capsys.readouterr().err


def _bomb_png(path):
    """A valid PNG header declaring 50,000 x 50,000 pixels (PIL refuses it as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_bomb_image_and_garbage_weights_give_one_line_errors(tiny_clip_model, image_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="braincorl-lite")
    cli_real.register(parser.add_subparsers(dest="command"))
    _bomb_png(image_dir / "img_99.png")
    args = parser.parse_args(["extract-features", "--images-dir", str(image_dir), "--out", str(tmp_path / "a.h5"),
                              "--model", tiny_clip_model, "--pretrained", "none", "--device", "cpu", "--no-progress"])
    assert args.func(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "img_99.png" in err and "DecompressionBomb" in err
    garbage = tmp_path / "weights.bin"
    garbage.write_bytes(b"<html>rate limited</html>" * 10)
    args = parser.parse_args(["extract-features", "--images-dir", str(image_dir), "--out", str(tmp_path / "b.h5"),
                              "--model", tiny_clip_model, "--pretrained", "none", "--weights", str(garbage),
                              "--no-quick-gelu", "--device", "cpu", "--no-progress"])
    assert args.func(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(garbage) in err and "cannot load the CLIP checkpoint" in err


@pytest.mark.slow
def test_weights_file_takes_quick_gelu_from_manifest(tiny_clip_model, tmp_path, monkeypatch, capsys):
    """--weights FILE --pretrained TAG: QuickGELU (and preprocessing) come from TAG's manifest entry."""
    import open_clip
    import torch

    torch.manual_seed(4)
    ckpt = tmp_path / "tiny.bin"
    torch.save(load_clip(tiny_clip_model, None, device="cpu").model.state_dict(), ckpt)
    entry = fetch.Entry(name="clip.tiny.quick", group="weights", url="https://example.org/tiny.bin",
                        local="tiny/quick/model.bin", sha256=None, size_bytes=None, licence="test",
                        description="tiny", manifest="clip", cache_subdir="weights",
                        open_clip={"model": tiny_clip_model, "pretrained": "quick", "quick_gelu": True})
    real = fetch.load_manifests()
    monkeypatch.setattr(fetch, "load_manifests", lambda directory=None: {**real, entry.name: entry})

    def quick(enc):
        return any(isinstance(m, open_clip.transformer.QuickGELU) for m in enc.model.modules())

    enc = load_clip(tiny_clip_model, "quick", weights=ckpt, device="cpu")
    assert enc.pretrained == "quick" and quick(enc)
    assert not quick(load_clip(tiny_clip_model, None, weights=ckpt, device="cpu", quick_gelu=False))
    with pytest.raises(ConfigError, match="quick_gelu=False would give wrong embeddings"):
        load_clip(tiny_clip_model, "quick", weights=ckpt, device="cpu", quick_gelu=False)
    with pytest.raises(ConfigError, match="does not list"):
        load_clip(tiny_clip_model, "unknown-tag", weights=ckpt, device="cpu")
    parser = argparse.ArgumentParser(prog="braincorl-lite")
    cli_real.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["extract-features", "--images-dir", str(tmp_path), "--out", str(tmp_path / "o.h5"),
                              "--model", tiny_clip_model, "--pretrained", "none", "--weights", str(ckpt)])
    assert args.func(args) == 1
    assert "--quick-gelu" in capsys.readouterr().err


# ---------------------------------------------------------------------- offline helpers of the book
def test_sample_photographs_are_rgb_uint8():
    from braincorl_lite.nsd.features import SAMPLE_PHOTOS, sample_photographs

    photos = sample_photographs()
    assert list(photos) == list(SAMPLE_PHOTOS)
    for img in photos.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    cam = photos["camera"]  # grey-level: the three channels are equal
    assert np.array_equal(cam[..., 0], cam[..., 2])
    with pytest.raises(ValueError, match="bundled"):
        sample_photographs(["not_an_image"])


def test_clip_weights_status_without_cache(monkeypatch, tmp_path):
    from braincorl_lite.nsd.features import clip_weights_status

    monkeypatch.setenv(fetch.ENV_CACHE, str(tmp_path / "cache"))
    st = clip_weights_status("ViT-B-32", "openai")
    assert st["cached"] is False and st["entry"] == "clip.ViT-B-32.openai"
    assert st["fetch_command"] == "braincorl-lite fetch clip --model ViT-B-32 --pretrained openai"
    assert st["path"].startswith(str(tmp_path / "cache"))
    p = tmp_path / "cache" / "weights" / "ViT-B-32" / "openai" / "open_clip_pytorch_model.bin"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"x")
    assert clip_weights_status("ViT-B-32", "openai")["cached"] is True


@pytest.mark.slow
def test_load_clip_offline_falls_back_to_random(tiny_clip_model, monkeypatch, tmp_path):
    from braincorl_lite.nsd.features import load_clip_offline

    monkeypatch.setenv(fetch.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "clip_entry", lambda model, tag, manifests=None: (_ for _ in ()).throw(
        fetch.MissingDataError("not cached")))
    a = load_clip_offline(tiny_clip_model, "openai", device="cpu", seed=3)
    b = load_clip_offline(tiny_clip_model, "openai", device="cpu", seed=3)
    assert a.pretrained == "none"
    img = [np.full((64, 64, 3), 90, dtype=np.uint8)]
    np.testing.assert_allclose(a.encode_images(img), b.encode_images(img), atol=1e-6)  # seeded
