"""Tests of braincorl_lite.checkpoint: one safetensors file, old sidecar checkpoints, refusals."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from braincorl_lite.checkpoint import (CheckpointError, load_checkpoint, load_pretrained, pretrained_path,
                                       save_checkpoint)
from braincorl_lite.errors import BraInCoRLError
from braincorl_lite.model import BraInCoRL, ModelConfig

E = 16


def tiny_model(**overrides):
    torch.manual_seed(0)
    config = dict(n_features=E, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64)
    model = BraInCoRL(ModelConfig(**{**config, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def episode(B=3, K=17):
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.normalize(torch.randn(K, E, generator=g), dim=-1), torch.randn(B, K, generator=g)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model(token_features="concat_xy")
    g = torch.Generator().manual_seed(4)
    rotation, _ = torch.linalg.qr(torch.randn(E, E, generator=g))
    model.set_feature_transform(torch.randn(E, generator=g), rotation)
    path = tmp_path / "tiny.safetensors"
    assert save_checkpoint(model, path, {"stage": "test", "epoch": np.int64(3), "loss": np.float32(0.25)}) == path
    return model, path


def rewrite_header(path, **entries):
    """Rewrite the file with some header entries replaced (None: removed)."""
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    header = {k: v for k, v in {**header, **entries}.items() if v is not None}
    save_file(tensors, str(path), metadata=header)


def write_old_format(model, path, metadata):
    """A checkpoint as version 0.1 wrote it: tensors, plus a JSON sidecar with config, metadata, SHA-256."""
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(path), metadata={"format": "pt"})
    sidecar = {"format": "braincorl_lite.checkpoint", "format_version": 1, "library_version": "0.1.0",
               "tensor_file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
               "config": model.config.to_dict(), "n_parameters": model.n_parameters(), "metadata": metadata}
    path.with_suffix(".json").write_text(json.dumps(sidecar))


def test_round_trip_is_bit_exact_and_one_file(saved):
    model, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.safetensors"]
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["config"]) == model.config.to_dict()
    loaded, meta = load_checkpoint(path)
    assert meta == {"stage": "test", "epoch": 3, "loss": 0.25}
    assert loaded.config == model.config and not loaded.training
    assert not loaded._identity_transform
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert torch.equal(state[name], loaded_state[name]), name
    x, y = episode()
    assert torch.equal(loaded(x, y), model(x, y))


def test_old_checkpoints_with_a_sidecar_still_load(tmp_path):
    model = tiny_model()
    path = tmp_path / "old.safetensors"
    write_old_format(model, path, {"step": 7})
    loaded, meta = load_checkpoint(path)
    assert meta == {"step": 7} and loaded.config == model.config
    x, y = episode()
    assert torch.equal(loaded(x, y), model(x, y))
    # a damaged old file is still caught by its recorded SHA-256
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)
    # a broken sidecar is named
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"sidecar .*old\.json could not be read"):
        load_checkpoint(path)
    path.with_suffix(".json").write_text(json.dumps({"format": "braincorl_lite.checkpoint"}))
    with pytest.raises(CheckpointError, match="has no 'config' entry"):
        load_checkpoint(path)
    # the sidecar gone: the file holds no configuration
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="holds no model configuration"):
        load_checkpoint(path)


def test_rejects_mismatched_config(saved):
    _, path = saved
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    rewrite_header(path, config=json.dumps({**config, "d_model": 48}))
    with pytest.raises(CheckpointError, match=r"tensor 'registers' has shape \(4, 32\).*\(4, 48\)"):
        load_checkpoint(path)
    rewrite_header(path, config=json.dumps({**config, "n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing tensors \['blocks\.2\."):
        load_checkpoint(path)
    rewrite_header(path, config=json.dumps({**config, "n_layers": 1}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['blocks\.1\."):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["header", "truncate", "garbage"])
def test_rejects_unreadable_files(saved, damage):
    _, path = saved
    data = bytearray(path.read_bytes())
    if damage == "header":
        data[10] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)


@pytest.mark.parametrize("entries, message", [
    (dict(config="{not json"), r"the 'config' entry of .* is not valid JSON"),
    (dict(config="[1, 2]"), r"the 'config' entry of .* must be a JSON object, got list"),
    (dict(metadata='"notes"'), r"the 'metadata' entry of .* must be a JSON object, got str"),
    (dict(config=None), r"holds no model configuration"),
    (dict(config=json.dumps({"n_features": E, "n_blocks": 3})),
     r"invalid model configuration in .*unknown ModelConfig field\(s\): \['n_blocks'\]"),
    (dict(config=json.dumps({"n_features": E, "d_model": 32, "n_heads": 5})),
     r"invalid model configuration in .*d_model \(32\) must be divisible by n_heads \(5\)"),
])
def test_header_problems_are_named(saved, entries, message):
    _, path = saved
    rewrite_header(path, **entries)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_files_and_wrong_paths(saved, tmp_path):
    _, path = saved
    nowhere = tmp_path / "nowhere.safetensors"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(nowhere)
    assert str(err.value) == f"checkpoint {nowhere} not found"
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    side = tmp_path / "tiny.json"
    side.write_text("{}")
    with pytest.raises(CheckpointError, match="is a checkpoint sidecar; pass the tensor file"):
        load_checkpoint(side)
    assert issubclass(CheckpointError, BraInCoRLError) and issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_rejects_tensors_that_are_not_float32(tmp_path, dtype):
    path = save_checkpoint(tiny_model().to(dtype), tmp_path / "wide.safetensors")
    name = str(dtype).replace("torch.", "")
    with pytest.raises(CheckpointError, match=rf"tensor 'blocks\.0\.attn\.out\.bias' has dtype {name}, expected float32"):
        load_checkpoint(path)


def test_rejects_non_finite_tensors(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[1].ffn.down.weight[0, :3] = torch.tensor([float("nan"), float("inf"), 1.0])
    path = save_checkpoint(model, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'blocks\.1\.ffn\.down\.weight' has 2 NaN or infinite"):
        load_checkpoint(path)


def test_rejects_unserialisable_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(tiny_model(), path, {"bad": object()})
    assert not path.exists()


def test_pretrained_models():
    model = load_pretrained()
    assert model.metadata["dataset"] == "simnsd" and not model.training
    assert pretrained_path().name == "simnsd_lite.safetensors"
    assert not pretrained_path().with_suffix(".json").exists()  # one file per checkpoint
    assert load_pretrained("simnsd_lite_truth_ablation").metadata["train_config"]["supervision"] == "truth"
    with pytest.raises(CheckpointError, match="unknown pretrained model 'nope'"):
        pretrained_path("nope")
