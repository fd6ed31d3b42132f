"""Tests of braincorl_lite.model: a hand-written forward, invariances, masking, shortcuts, feature transform."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from braincorl_lite import _fastpath
from braincorl_lite.checkpoint import load_checkpoint, pretrained_path
from braincorl_lite.model import BraInCoRL, ModelConfig, fit_braincorl, pca_feature_transform

E = 16  # feature dimension of the tiny test models
ATOL = 1e-5


def tiny_config(**overrides):
    values = dict(n_features=E, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, dropout=0.0)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(seed=0, **overrides):
    """A tiny model with every parameter perturbed.

    The readout starts at zero by design, which would make most invariance tests trivially
    true; the perturbation gives a generic, non-degenerate network.
    """
    torch.manual_seed(seed)
    model = BraInCoRL(tiny_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def predict(hw, x):
    """Responses ``x @ w + b`` of hyperweights (B, E + 1) to images (Q, E) or (B, Q, E): (B, Q)."""
    return (x @ hw[:, :-1, None]).squeeze(-1) + hw[:, -1:]


def episode(B=3, K=20, seed=1, shared=True):
    g = torch.Generator().manual_seed(seed)
    shape = (K, E) if shared else (B, K, E)
    x = torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)
    y = torch.randn(B, K, generator=g)
    return x, y


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    cfg = tiny_config(token_features="concat_xy", n_components=8)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(d_model=30)
    with pytest.raises(ValueError, match="token_features"):
        tiny_config(token_features="xyz")
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_blocks": 3})


def test_paper_config_parameter_count():
    from braincorl_lite.training import count_parameters

    # the official CLIP model (scripts/model.py of the BraInCoRL code) has exactly this many
    assert count_parameters(ModelConfig.paper()) == 97_074_852
    cfg = ModelConfig.paper()
    assert (cfg.block, cfg.log_n_on, cfg.dropout, cfg.response_norm) == (
        "official", "query_input", 0.5, False)


def test_old_config_dicts_keep_the_lite_architecture():
    """Sidecars written before ``block`` / ``log_n_on`` existed load as the lite model."""
    old = tiny_config().to_dict()
    del old["block"], old["log_n_on"]
    cfg = ModelConfig.from_dict(old)
    assert (cfg.block, cfg.log_n_on) == ("lite", "logits")
    assert ModelConfig.lite().block == "lite"
    with pytest.raises(ValueError, match="block"):
        tiny_config(block="paper")
    with pytest.raises(ValueError, match="log_n_on"):
        tiny_config(log_n_on="keys")
    from braincorl_lite.errors import BraInCoRLError

    with pytest.raises(BraInCoRLError):
        tiny_config(d_model=30)


#: tensor names of a 1-block lite model, as written by every checkpoint before the official
#: block existed; they must never change
LITE_TENSOR_NAMES = [
    "registers", "feature_mean", "feature_proj",
    "token_embed.norm.weight", "token_embed.norm.bias", "token_embed.fc1.weight",
    "token_embed.fc1.bias", "token_embed.fc2.weight", "token_embed.fc2.bias",
    "token_embed.skip.weight", "token_embed.skip.bias",
    "blocks.0.attn_norm.weight", "blocks.0.attn_norm.bias", "blocks.0.attn.qkv.weight",
    "blocks.0.attn.qkv.bias", "blocks.0.attn.out.weight", "blocks.0.attn.out.bias",
    "blocks.0.ffn_norm.weight", "blocks.0.ffn_norm.bias", "blocks.0.ffn.gate_up.weight",
    "blocks.0.ffn.gate_up.bias", "blocks.0.ffn.down.weight", "blocks.0.ffn.down.bias",
    "final_norm.weight", "final_norm.bias",
    "readout.fc1.weight", "readout.fc1.bias", "readout.fc2.weight", "readout.fc2.bias",
    "readout.skip.weight", "readout.skip.bias",
]


def test_lite_tensor_names_are_unchanged():
    assert list(BraInCoRL(tiny_config(n_layers=1)).state_dict()) == LITE_TENSOR_NAMES


#: SHA-256 of the shipped checkpoint the reference outputs below were recorded with (the same
#: tensors were first shipped with a JSON sidecar, SHA-256 e971de41...; re-saved as one file)
SHIPPED_SHA256 = "5ac14ab0a73ac1bbfa85838ddc6ad53edfa3667e2e3c78cf5c77a6ed1477f0b4"


def test_shipped_checkpoint_outputs_are_unchanged():
    """Encoders of the shipped lite model, recorded when it was shipped: model code changes keep them."""
    path = pretrained_path("simnsd_lite")
    if hashlib.sha256(path.read_bytes()).hexdigest() != SHIPPED_SHA256:
        pytest.skip("the shipped checkpoint was replaced; its reference outputs no longer apply")
    model, _ = load_checkpoint(path)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(60, 512, generator=g), dim=-1)
    y = torch.randn(5, 60, generator=g)
    mask = torch.rand(5, 60, generator=g) > 0.3
    expected = {
        False: ([0.03642725944519043, 0.08233540505170822, -0.026111319661140442,
                 0.06385940313339233, -0.15939129889011383],
                [-0.02134336717426777, -0.14328667521476746, 0.08394477516412735, -0.0022589571308344603],
                [1.366300106048584, 1.8249521255493164, 1.9280132055282593,
                 2.8151144981384277, 2.9408044815063477]),
        True: ([-0.059510957449674606, 0.08476980775594711, -0.14585688710212708,
                0.0018573254346847534, -0.0886639729142189],
                [-0.005378247704356909, -0.18523459136486053, 0.09977031499147415, -0.04031730443239212],
                [1.734095811843872, 2.408611297607422, 2.2314112186431885,
                 3.3206536769866943, 2.7309889793395996]),
    }
    with torch.no_grad():
        for masked, (bias, w0, norms) in expected.items():
            for fast in (True, False):
                model.fast_paths = fast
                hw = model(x, y, mask if masked else None)
                got = (hw[:, -1], hw[0, :4], hw[:, :-1].norm(dim=1))
                for g_, e in zip(got, (bias, w0, norms)):
                    torch.testing.assert_close(g_, torch.tensor(e), atol=2e-5, rtol=2e-5)


def reference_forward(model, x, y):
    """The lite forward written out with plain tensor operations, as one would in a notebook.

    ``x`` (K, E) shared by the voxels, ``y`` (B, K), no padding.
    """
    sd, cfg = model.state_dict(), model.config
    (B, K), d, h = y.shape, cfg.d_model, cfg.n_heads

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[name + ".weight"], sd[name + ".bias"])

    def lin(t, name):
        return F.linear(t, sd[name + ".weight"], sd[name + ".bias"])

    mean, std = y.mean(1, keepdim=True), y.std(1, unbiased=False, keepdim=True).clamp_min(1e-6)
    xp, yn = ((x - sd["feature_mean"]) @ sd["feature_proj"]).expand(B, K, -1), ((y - mean) / std)[..., None]
    t = torch.cat([xp, yn, xp * yn] if cfg.token_features == "concat_xy" else [xp, yn], dim=-1)
    tokens = lin(t, "token_embed.skip") + lin(F.gelu(lin(ln(t, "token_embed.norm"), "token_embed.fc1")),
                                              "token_embed.fc2")
    z = torch.cat([sd["registers"].expand(B, -1, -1), tokens], dim=1)
    N = z.shape[1]
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        q, k, v = lin(ln(z, p + "attn_norm"), p + "attn.qkv").view(B, N, 3, h, d // h).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-1, -2) * math.log(N) / math.sqrt(d // h)).softmax(dim=-1)
        z = z + lin((attention @ v).transpose(1, 2).reshape(B, N, d), p + "attn.out")
        gate, up = lin(ln(z, p + "ffn_norm"), p + "ffn.gate_up").chunk(2, dim=-1)
        z = z + lin(F.silu(gate) * up, p + "ffn.down")
    r = ln(z[:, 0], "final_norm")
    out = lin(r, "readout.skip") + lin(F.gelu(lin(r, "readout.fc1")), "readout.fc2")
    w = out[:, :-1] @ sd["feature_proj"].T
    b = out[:, -1:] - w @ sd["feature_mean"][:, None]
    return torch.cat([w * std, b * std + mean], dim=1)


@pytest.mark.parametrize("token_features", ["xy", "concat_xy"])
def test_the_forward_is_the_one_written_out(token_features):
    model = tiny_model(token_features=token_features, n_components=8)
    g = torch.Generator().manual_seed(2)
    model.set_feature_transform(0.1 * torch.randn(E, generator=g), torch.randn(E, 8, generator=g) / 4)
    x, y = episode(B=5, K=30)
    with torch.no_grad():
        expected = reference_forward(model, x, y)
        for fast in (False, True):
            model.fast_paths = fast
            torch.testing.assert_close(model(x, y), expected, atol=ATOL, rtol=1e-4)
        shipped, _ = load_checkpoint(pretrained_path())  # the shipped model too
        x, y = F.normalize(torch.randn(40, 512, generator=g), dim=-1), torch.randn(3, 40, generator=g)
        torch.testing.assert_close(shipped(x, y), reference_forward(shipped, x, y), atol=ATOL, rtol=1e-4)


def test_lite_config_is_small():
    n = BraInCoRL(ModelConfig.lite()).n_parameters()
    assert 3e5 < n < 2e6, n


# ------------------------------------------------------------------------------------------
# shapes and invariances
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_features", ["xy", "concat_xy"])
def test_output_shape_and_permutation_invariance(token_features):
    model = tiny_model(token_features=token_features)
    x, y = episode(B=4, K=25, shared=False)
    hw = model(x, y)
    assert hw.shape == (4, E + 1)
    assert torch.isfinite(hw).all()
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(3))
    hw_perm = model(x[:, perm], y[:, perm])
    torch.testing.assert_close(hw_perm, hw, atol=ATOL, rtol=1e-4)


def test_not_trivially_constant():
    """Sanity check of the test fixture: different responses give different encoders."""
    model = tiny_model()
    x, y = episode(B=2)
    hw = model(x, y)
    assert (hw[0] - hw[1]).abs().max() > 1e-3


def test_shared_support_equals_expanded():
    model = tiny_model(token_features="concat_xy")
    x, y = episode(B=5, K=12)
    torch.testing.assert_close(model(x, y), model(x.repeat(5, 1, 1), y), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("token_features", ["xy", "concat_xy"])
@pytest.mark.parametrize("n_components", [None, 8])
@pytest.mark.parametrize("masked", [False, True])
def test_inference_shortcuts_are_exact(token_features, n_components, masked):
    """Shared-image token embedding and the register-0-only last block change no output."""
    model = tiny_model(token_features=token_features, n_components=n_components, n_layers=3)
    x, y = episode(B=6, K=15)
    mask = torch.rand(6, 15, generator=torch.Generator().manual_seed(3)) > 0.3 if masked else None
    model.fast_paths = True
    fast = model(x, y, mask)
    model.fast_paths = False
    plain = model(x, y, mask)
    assert (plain[0] - plain[1]).abs().max() > 1e-3
    torch.testing.assert_close(fast, plain, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("token_features", ["xy", "concat_xy"])
def test_shortcuts_keep_training_gradients(token_features):
    model = tiny_model(n_layers=2, token_features=token_features).train()
    x, y = episode(B=4, K=10)
    grads = {}
    for fast in (True, False):
        model.zero_grad()
        model.fast_paths = fast
        model(x, y).square().sum().backward()
        grads[fast] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(grads[True]) == len(grads[False])
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lite", "lite without response_norm", "official"])
def test_padding_mask_matches_unpadded(kind):
    model = official_model() if kind == "official" else tiny_model(response_norm=kind == "lite")
    g = torch.Generator().manual_seed(5)
    sizes = [7, 15, 1, 10]
    K = max(sizes) + 3
    x = torch.nn.functional.normalize(torch.randn(len(sizes), K, E, generator=g), dim=-1)
    y = torch.randn(len(sizes), K, generator=g)
    mask = torch.zeros(len(sizes), K, dtype=torch.bool)
    for i, k in enumerate(sizes):
        mask[i, :k] = True
    # garbage in the padding, including NaN and huge values
    x_pad, y_pad = x.clone(), y.clone()
    x_pad[~mask] = 1e4 * torch.randn(int((~mask).sum()), E, generator=g)
    y_pad[~mask] = float("nan")
    x_pad[0, -1, 0] = float("nan")
    hw = model(x_pad, y_pad, mask=mask)
    assert torch.isfinite(hw).all()
    for i, k in enumerate(sizes):
        alone = model(x[i : i + 1, :k], y[i : i + 1, :k])
        torch.testing.assert_close(hw[i : i + 1], alone, atol=ATOL, rtol=1e-4)


def test_full_mask_equals_no_mask():
    model = tiny_model()
    x, y = episode(B=3, K=9)
    mask = torch.ones(3, 9, dtype=torch.bool)
    torch.testing.assert_close(model(x, y, mask=mask), model(x, y), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("K", [1, 1000])
def test_extreme_support_sizes(K):
    model = tiny_model()
    x, y = episode(B=2, K=K)
    hw = model(x, y)
    assert hw.shape == (2, E + 1)
    assert torch.isfinite(hw).all()


def test_response_norm_equivariance():
    model = tiny_model(response_norm=True)
    x, y = episode(B=4, K=30)
    a, c = 3.7, -2.1
    hw = model(x, y)
    hw2 = model(x, a * y + c)
    torch.testing.assert_close(hw2[:, :-1], a * hw[:, :-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hw2[:, -1], a * hw[:, -1] + c, atol=1e-4, rtol=1e-4)


def test_initial_model_predicts_the_support_mean():
    torch.manual_seed(0)
    model = BraInCoRL(tiny_config(response_norm=True)).eval()
    x, y = episode(B=3, K=10)
    hw = model(x, y)
    assert torch.equal(hw[:, :-1], torch.zeros(3, E))
    torch.testing.assert_close(hw[:, -1], y.mean(dim=1))


def test_log_n_scaling_switch_changes_output():
    x, y = episode(B=2, K=30)
    on = tiny_model(log_n_scaling=True)(x, y)
    off = tiny_model(log_n_scaling=False)(x, y)
    assert (on - off).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------
# the official architecture (block="official", log(N) on the query input)
# ------------------------------------------------------------------------------------------


def official_model(seed=0, **overrides):
    """A tiny model with the architecture of ModelConfig.paper()."""
    values = dict(block="official", log_n_on="query_input", response_norm=False)
    values.update(overrides)
    return tiny_model(seed, **values)


def test_official_block_layers():
    model = official_model(n_layers=2)
    names = list(model.state_dict())
    assert "final_norm.weight" not in names
    for mlp in ("token_embed", "readout"):
        for layer in ("norm", "fc1", "hidden_norm", "fc2", "skip"):
            assert f"{mlp}.{layer}.weight" in names and f"{mlp}.{layer}.bias" in names
    assert all(not block.ffn_dropout for block in model.blocks)
    assert all(block.ffn_dropout for block in tiny_model().blocks)


@pytest.mark.parametrize("log_n_on", ["query_input", "logits"])
def test_official_forward_backward_and_permutation_invariance(log_n_on):
    model = official_model(log_n_on=log_n_on)
    x, y = episode(B=4, K=25, shared=False)
    hw = model(x, y)
    assert hw.shape == (4, E + 1) and torch.isfinite(hw).all()
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model(x[:, perm], y[:, perm]), hw, atol=ATOL, rtol=1e-4)
    assert (hw[0] - hw[1]).abs().max() > 1e-3

    model.train()
    model(x, y).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_official_shortcuts_are_exact(masked, shared):
    """The register-0-only last block also holds with log(N) on the query input; the
    shared-image shortcut does not apply to the official MLP and falls back to the plain path."""
    model = official_model(n_layers=3)
    x, y = episode(B=6, K=15, shared=shared)
    mask = torch.rand(6, 15, generator=torch.Generator().manual_seed(3)) > 0.3 if masked else None
    assert not _fastpath.can_embed_shared_images(model)
    model.fast_paths = True
    fast = model(x, y, mask)
    model.fast_paths = False
    plain = model(x, y, mask)
    torch.testing.assert_close(fast, plain, atol=ATOL, rtol=1e-5)
    hw, attention = model(x, y, mask, return_attention=True)
    torch.testing.assert_close(hw, plain, atol=ATOL, rtol=1e-5)
    assert len(attention) == 3


def test_official_shortcuts_keep_training_gradients():
    model = official_model(n_layers=2).train()  # dropout 0: both passes see the same network
    x, y = episode(B=4, K=10)
    grads = {}
    for fast in (True, False):
        model.zero_grad()
        model.fast_paths = fast
        model(x, y).square().sum().backward()
        grads[fast] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_log_n_on_query_input_differs_from_logits_only_through_the_query_bias():
    x, y = episode(B=3, K=30)
    on_query = official_model(log_n_on="query_input")
    on_logits = official_model(log_n_on="logits")
    assert (on_query(x, y) - on_logits(x, y)).abs().max() > 1e-4
    d = on_query.config.d_model
    with torch.no_grad():
        for model in (on_query, on_logits):
            for block in model.blocks:
                block.attn.qkv.bias[:d] = 0.0
    # log(N) * (W z) == (W (log(N) z)) without a bias: the two placements then agree
    torch.testing.assert_close(on_query(x, y), on_logits(x, y), atol=ATOL, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# feature transform
# ------------------------------------------------------------------------------------------


def test_feature_transform_predictions_in_original_space():
    model = tiny_model()
    x, y = episode(B=3, K=20)
    q = torch.nn.functional.normalize(torch.randn(7, E), dim=-1)
    hw_identity = model(x, y)

    g = torch.Generator().manual_seed(11)
    rotation, _ = torch.linalg.qr(torch.randn(E, E, generator=g, dtype=torch.float64))
    mean = 0.1 * torch.randn(E, generator=g)
    model.set_feature_transform(mean, rotation.float())
    assert not model._identity_transform
    hw = model(x, y)
    assert hw.shape == (3, E + 1)

    # the same network applied by hand to the transformed features must predict the same
    # responses as the returned original-space hyperweights
    x_t, q_t = (x - mean) @ rotation.float(), (q - mean) @ rotation.float()
    model.reset_feature_transform()
    assert model._identity_transform
    torch.testing.assert_close(model(x, y), hw_identity)
    hw_t = model(x_t, y)
    torch.testing.assert_close(predict(hw, q), predict(hw_t, q_t), atol=1e-4, rtol=1e-4)


def test_feature_transform_with_fewer_components():
    g = np.random.default_rng(0)
    feats = g.standard_normal((200, E)).astype(np.float32)
    mean, proj = pca_feature_transform(feats, n_components=6, whiten=True)
    assert mean.shape == (E,) and proj.shape == (E, 6)
    cov = np.cov(((feats - mean) @ proj).T)
    np.testing.assert_allclose(cov, np.eye(6), atol=1e-3)

    # the basis is sklearn's PCA: the principal axes of the centred features, up to sign
    _, s, vt = np.linalg.svd(feats - feats.mean(0), full_matrices=False)
    np.testing.assert_allclose(mean, feats.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.abs(proj * (s[:6] / np.sqrt(199))), np.abs(vt[:6].T), atol=1e-4)
    _, plain = pca_feature_transform(feats)
    assert plain.shape == (E, E)
    np.testing.assert_allclose(plain.T @ plain, np.eye(E), atol=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        pca_feature_transform(feats[:5], n_components=6)

    model = tiny_model(n_components=6)
    with pytest.raises(ValueError, match="shape"):
        model.set_feature_transform(mean, np.eye(E, dtype=np.float32))
    model.set_feature_transform(mean, proj)
    x, y = episode(B=2, K=15)
    hw = model(x, y)
    assert hw.shape == (2, E + 1)
    # the weights live in the span of the kept components
    w = hw[:, :-1].double()
    basis = torch.as_tensor(proj, dtype=torch.float64)
    in_span = basis @ torch.linalg.lstsq(basis, w.T).solution
    torch.testing.assert_close(in_span.T, w, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# attention maps
# ------------------------------------------------------------------------------------------


def test_attention_maps():
    model = tiny_model()
    B, K = 3, 11
    x, y = episode(B=B, K=K)
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[1, 6:] = False
    hw_fast = model(x, y, mask=mask)
    hw, attention = model(x, y, mask=mask, return_attention=True)
    torch.testing.assert_close(hw, hw_fast, atol=ATOL, rtol=1e-5)

    cfg = model.config
    N = cfg.n_registers + K
    assert len(attention) == cfg.n_layers
    for probs in attention:
        assert probs.shape == (B, cfg.n_heads, N, N)
        torch.testing.assert_close(probs.sum(-1), torch.ones(B, cfg.n_heads, N))
        assert (probs >= 0).all()
        padded = cfg.n_registers + torch.arange(6, K)
        assert torch.equal(probs[1][..., padded], torch.zeros_like(probs[1][..., padded]))


# ------------------------------------------------------------------------------------------
# modes, gradients, devices
# ------------------------------------------------------------------------------------------


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = tiny_model(dropout=0.3)
    x, y = episode(B=4, K=20)
    assert torch.equal(model(x, y), model(x, y))
    model.train()
    assert not torch.equal(model(x, y), model(x, y))


def test_gradient_descent_fits_a_fixed_episode():
    torch.manual_seed(0)
    model = BraInCoRL(tiny_config())
    g = torch.Generator().manual_seed(2)
    B, K, Q = 8, 40, 30
    w_true = torch.randn(B, E, generator=g)
    xs = torch.nn.functional.normalize(torch.randn(K + Q, E, generator=g), dim=-1)
    ys = xs @ w_true.T + 0.3
    x, y = xs[:K], ys[:K].T
    xq, yq = xs[K:], ys[K:].T

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(predict(model(x, y), xq), yq)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0], losses


def test_fit_braincorl_matches_forward():
    model = tiny_model(dropout=0.3).train()
    x, y = episode(B=10, K=12)
    W, b = fit_braincorl(model, x.numpy(), y.T.numpy(), chunk_size=3)  # (K, E), (K, V)
    assert model.training  # mode restored
    assert W.shape == (10, E) and b.shape == (10,) and W.dtype == b.dtype == np.float32
    model.eval()
    hw = model(x, y).detach().numpy()
    np.testing.assert_allclose(W, hw[:, :-1], atol=ATOL)
    np.testing.assert_allclose(b, hw[:, -1], atol=ATOL)
    q = torch.randn(7, E)
    np.testing.assert_allclose(q.numpy() @ W.T + b, predict(torch.as_tensor(hw), q).T.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        fit_braincorl(model, x.numpy(), y.numpy())  # (V, K): the wrong orientation


def test_bad_shapes_are_rejected():
    model = tiny_model()
    x, y = episode(B=3, K=10)
    with pytest.raises(ValueError, match="support_x"):
        model(x[:9], y)
    with pytest.raises(ValueError, match="mask"):
        model(x, y, mask=torch.ones(3, 9, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("block", ["lite", "official"])
def test_cuda_matches_cpu(block):
    model = tiny_model() if block == "lite" else official_model()
    x, y = episode(B=6, K=50)
    mask = torch.ones(6, 50, dtype=torch.bool)
    mask[2, 20:] = False
    expected = model(x, y, mask=mask)
    model_gpu = model.to("cuda")
    got = model_gpu(x.cuda(), y.cuda(), mask=mask.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-3)
    W, b = fit_braincorl(model_gpu, x, y.T, chunk_size=4)
    np.testing.assert_allclose(W, model(x, y).detach().numpy()[:, :-1], atol=1e-4, rtol=1e-3)
    _, attention = model_gpu(x.cuda(), y.cuda(), mask=mask.cuda(), return_attention=True)
    assert attention[0].is_cuda



def test_bfloat16_autocast_runs():
    model = tiny_model()
    x, y = episode(B=3, K=10)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 4:] = False
    expected = model(x, y, mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x, y, mask=mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.1)
