"""Tests of braincorl_lite.convert: official BraInCoRL state dicts -> BraInCoRL.

The official layout is written down here as a table of tensor names and shapes, read off the
classes of the official ``scripts/model.py`` (HyperweightsPredictorModel: ``early_layers`` and
``weight_pred`` are nn.Sequential's of one ResidualBlock, itself an nn.Sequential
``[LayerNorm, LeakyReLU, Dropout, Linear, LayerNorm, LeakyReLU, Dropout, Linear]`` plus a linear
``bypass``; ``transformer`` is an nn.Sequential of blocks with ``layer_norm_1``,
``attn`` (nn.MultiheadAttention), ``layer_norm_2`` and ``ffn.linear1`` / ``ffn.linear2``;
``cls_token`` holds the registers). The official code is not imported.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from braincorl_lite.checkpoint import CheckpointError
from braincorl_lite.convert import infer_official_config, load_official_model, official_key_map
from braincorl_lite.model import BraInCoRL, ModelConfig

# tiny official-layout model
E, D, LAYERS, HEADS, REGISTERS, HIDDEN, FFN = 16, 32, 2, 4, 4, 64, 48


def official_shapes(E, d, n_layers, n_registers, hidden, ffn):
    """Tensor names and shapes of the official model's state dict."""
    shapes = {"cls_token": (1, n_registers, d)}

    def residual_block(prefix, d_in, d_out):
        shapes.update({
            f"{prefix}.block.0.weight": (d_in,), f"{prefix}.block.0.bias": (d_in,),
            f"{prefix}.block.3.weight": (hidden, d_in), f"{prefix}.block.3.bias": (hidden,),
            f"{prefix}.block.4.weight": (hidden,), f"{prefix}.block.4.bias": (hidden,),
            f"{prefix}.block.7.weight": (d_out, hidden), f"{prefix}.block.7.bias": (d_out,),
            f"{prefix}.bypass.weight": (d_out, d_in), f"{prefix}.bypass.bias": (d_out,),
        })

    residual_block("early_layers.0", E + 1, d)
    for i in range(n_layers):
        p = f"transformer.{i}"
        shapes.update({
            f"{p}.layer_norm_1.weight": (d,), f"{p}.layer_norm_1.bias": (d,),
            f"{p}.attn.in_proj_weight": (3 * d, d), f"{p}.attn.in_proj_bias": (3 * d,),
            f"{p}.attn.out_proj.weight": (d, d), f"{p}.attn.out_proj.bias": (d,),
            f"{p}.layer_norm_2.weight": (d,), f"{p}.layer_norm_2.bias": (d,),
            f"{p}.ffn.linear1.weight": (2 * ffn, d), f"{p}.ffn.linear1.bias": (2 * ffn,),
            f"{p}.ffn.linear2.weight": (d, ffn), f"{p}.ffn.linear2.bias": (d,),
        })
    residual_block("weight_pred.0", d, E + 1)
    return shapes


def official_state_dict(seed=0, **sizes):
    values = dict(E=E, d=D, n_layers=LAYERS, n_registers=REGISTERS, hidden=HIDDEN, ffn=FFN)
    values.update(sizes)
    g = torch.Generator().manual_seed(seed)
    return {name: 0.3 * torch.randn(*shape, generator=g)
            for name, shape in official_shapes(**values).items()}


#: where each official tensor must land (written independently of convert.official_key_map)
EXPECTED_PLACES = {
    "cls_token": "registers",
    **{f"early_layers.0.{a}.{w}": f"token_embed.{b}.{w}"
       for a, b in [("block.0", "norm"), ("block.3", "fc1"), ("block.4", "hidden_norm"),
                    ("block.7", "fc2"), ("bypass", "skip")] for w in ("weight", "bias")},
    **{f"weight_pred.0.{a}.{w}": f"readout.{b}.{w}"
       for a, b in [("block.0", "norm"), ("block.3", "fc1"), ("block.4", "hidden_norm"),
                    ("block.7", "fc2"), ("bypass", "skip")] for w in ("weight", "bias")},
    **{f"transformer.{i}.{a}": f"blocks.{i}.{b}" for i in range(LAYERS) for a, b in [
        ("layer_norm_1.weight", "attn_norm.weight"), ("layer_norm_1.bias", "attn_norm.bias"),
        ("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
        ("attn.out_proj.weight", "attn.out.weight"), ("attn.out_proj.bias", "attn.out.bias"),
        ("layer_norm_2.weight", "ffn_norm.weight"), ("layer_norm_2.bias", "ffn_norm.bias"),
        ("ffn.linear1.weight", "ffn.gate_up.weight"), ("ffn.linear1.bias", "ffn.gate_up.bias"),
        ("ffn.linear2.weight", "ffn.down.weight"), ("ffn.linear2.bias", "ffn.down.bias"),
    ]},
}


def official_forward(sd, x, y, n_heads):
    """The official model's forward pass (eval mode) on official tensors, written out."""

    def residual_block(prefix, z):
        h = F.layer_norm(z, z.shape[-1:], sd[f"{prefix}.block.0.weight"], sd[f"{prefix}.block.0.bias"])
        h = F.linear(F.leaky_relu(h, 0.1), sd[f"{prefix}.block.3.weight"], sd[f"{prefix}.block.3.bias"])
        h = F.layer_norm(h, h.shape[-1:], sd[f"{prefix}.block.4.weight"], sd[f"{prefix}.block.4.bias"])
        h = F.linear(F.leaky_relu(h, 0.1), sd[f"{prefix}.block.7.weight"], sd[f"{prefix}.block.7.bias"])
        return h + F.linear(z, sd[f"{prefix}.bypass.weight"], sd[f"{prefix}.bypass.bias"])

    tokens = residual_block("early_layers.0", torch.cat([x, y[..., None]], dim=-1))
    z = torch.cat([sd["cls_token"].expand(len(y), -1, -1), tokens], dim=1)
    d, n_layers = z.shape[-1], 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer."))
    for i in range(n_layers):
        p = f"transformer.{i}"
        attn = torch.nn.MultiheadAttention(d, n_heads, batch_first=True).eval()
        attn.load_state_dict({name: sd[f"{p}.attn.{name}"] for name in
                              ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
        u = F.layer_norm(z, (d,), sd[f"{p}.layer_norm_1.weight"], sd[f"{p}.layer_norm_1.bias"])
        z = z + attn(math.log(z.shape[1]) * u, u, u, need_weights=False)[0]
        u = F.layer_norm(z, (d,), sd[f"{p}.layer_norm_2.weight"], sd[f"{p}.layer_norm_2.bias"])
        gate, up = F.linear(u, sd[f"{p}.ffn.linear1.weight"], sd[f"{p}.ffn.linear1.bias"]).chunk(2, -1)
        z = z + F.linear(F.silu(gate) * up, sd[f"{p}.ffn.linear2.weight"], sd[f"{p}.ffn.linear2.bias"])
    return residual_block("weight_pred.0", z[:, 0])


def episode(B=3, K=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(B, K, E, generator=g), dim=-1)
    return x, torch.randn(B, K, generator=g)


# ------------------------------------------------------------------------------------------


def test_the_table_gives_the_published_parameter_count():
    from braincorl_lite.training import count_parameters

    shapes = official_shapes(E=512, d=560, n_layers=20, n_registers=4, hidden=1120, ffn=2048)
    n = sum(math.prod(shape) for shape in shapes.values())
    assert n == 97_074_852 == count_parameters(ModelConfig.paper())
    assert set(shapes) == set(official_key_map(20))


def test_full_size_config_is_inferred_as_the_paper_config():
    shapes = official_shapes(E=512, d=560, n_layers=20, n_registers=4, hidden=1120, ffn=2048)
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    assert infer_official_config(meta) == ModelConfig.paper()


def test_every_tensor_lands_in_its_place():
    sd = official_state_dict()
    model = load_official_model(sd, n_heads=HEADS)
    cfg = model.config
    assert (cfg.n_features, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_registers,
            cfg.ffn_hidden, cfg.token_hidden, cfg.readout_hidden) == (
        E, D, LAYERS, HEADS, REGISTERS, FFN, HIDDEN, HIDDEN)
    assert (cfg.block, cfg.log_n_on, cfg.response_norm) == ("official", "query_input", False)
    assert not model.training

    ours = model.state_dict()
    assert set(EXPECTED_PLACES) == set(sd)
    for old, new in EXPECTED_PLACES.items():
        expected = sd[old][0] if old == "cls_token" else sd[old]
        assert torch.equal(ours[new], expected), (old, new)
    # everything else is the identity feature transform
    assert set(ours) - set(EXPECTED_PLACES.values()) == {"feature_mean", "feature_proj"}
    assert torch.equal(ours["feature_proj"], torch.eye(E)) and not ours["feature_mean"].any()


@pytest.mark.parametrize("fast_paths", [True, False])
def test_converted_model_computes_the_official_output(fast_paths):
    sd = official_state_dict(seed=3)
    model = load_official_model(sd, n_heads=HEADS)
    model.fast_paths = fast_paths
    x, y = episode(B=3, K=20)
    with torch.no_grad():
        expected = official_forward(sd, x, y, HEADS)
        got = model(x, y)
        assert got.shape == (3, E + 1) and torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        # images shared by every voxel, and padding, give the same encoders
        torch.testing.assert_close(model(x[0], y), official_forward(sd, x[:1].expand(3, -1, -1), y, HEADS),
                                   atol=1e-5, rtol=1e-4)
        padded_x = torch.cat([x, torch.randn(3, 5, E)], dim=1)
        padded_y = torch.cat([y, torch.full((3, 5), float("nan"))], dim=1)
        mask = torch.arange(25).expand(3, -1) < 20
        torch.testing.assert_close(model(padded_x, padded_y, mask), expected, atol=1e-5, rtol=1e-4)


def test_wrappers_and_files(tmp_path):
    from safetensors.torch import save_file

    sd = official_state_dict()
    reference = load_official_model(sd, n_heads=HEADS).state_dict()
    lightning = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    torch.save(lightning, tmp_path / "official.ckpt")
    save_file(sd, str(tmp_path / "official.safetensors"))
    for source in (lightning, tmp_path / "official.ckpt", str(tmp_path / "official.safetensors")):
        state = load_official_model(source, n_heads=HEADS).state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
    with pytest.raises(CheckpointError, match="not found"):
        load_official_model(tmp_path / "absent.ckpt")


def test_other_dtypes_are_converted_to_float32():
    sd = {k: v.double() for k, v in official_state_dict().items()}
    model = load_official_model(sd, n_heads=HEADS)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values())


def test_unknown_and_missing_tensors_are_named():
    sd = official_state_dict()
    sd["transformer.0.attn.bias_k"] = torch.zeros(1, 1, D)
    del sd["weight_pred.0.block.4.bias"]
    with pytest.raises(CheckpointError) as err:
        load_official_model(sd, n_heads=HEADS)
    message = str(err.value)
    assert "missing tensors ['weight_pred.0.block.4.bias']" in message
    assert "unknown tensors ['transformer.0.attn.bias_k']" in message

    sd = official_state_dict()
    del sd["transformer.0.ffn.linear2.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors \['transformer\.0\.ffn\.linear2"):
        load_official_model(sd, n_heads=HEADS)

    sd = official_state_dict()  # a second early residual block (num_early_lyr = 2) is unsupported
    sd["early_layers.1.bypass.weight"] = torch.zeros(D, D)
    with pytest.raises(CheckpointError, match=r"unknown tensors \['early_layers\.1\.bypass\.weight'\]"):
        load_official_model(sd, n_heads=HEADS)

    with pytest.raises(CheckpointError, match="not a state dict of the official"):
        load_official_model(BraInCoRL(ModelConfig.lite(n_features=E, d_model=D, n_layers=1)).state_dict())


def test_bad_shapes_and_values_are_named():
    sd = official_state_dict()
    sd["transformer.1.attn.out_proj.weight"] = torch.zeros(D, D + 1)
    with pytest.raises(CheckpointError, match=r"'transformer\.1\.attn\.out_proj\.weight' has shape "
                                              r"\(32, 33\), expected \(32, 32\)"):
        load_official_model(sd, n_heads=HEADS)

    sd = official_state_dict()
    sd["early_layers.0.block.3.bias"][2] = float("nan")
    with pytest.raises(CheckpointError, match=r"'early_layers\.0\.block\.3\.bias' contains NaN"):
        load_official_model(sd, n_heads=HEADS)

    with pytest.raises(CheckpointError, match="valid model.*divisible"):
        load_official_model(official_state_dict(), n_heads=5)
