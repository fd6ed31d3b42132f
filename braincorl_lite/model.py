"""The in-context encoder: a transformer that turns a few examples into a voxel's encoder.

Each voxel is one task. The model reads ``K`` support pairs ``(x_i, y_i)`` -- an image embedding
(``E`` numbers) and the voxel's response to that image -- and returns the voxel's linear encoder
``[w ; b]`` (``E + 1`` "hyperweights"); the response to a new image ``x`` is ``x @ w + b``::

    support_x (B, K, E) or (K, E)           support_y (B, K)
      | fixed feature transform               | z-score per voxel (response_norm)
      +--- tokens [x' ; y'] (B, K, P + 1) ---+
                    | token_embed (residual MLP)                  (B, K, d)
                    | prepend n_registers learned register tokens (B, R + K, d)
                    | transformer blocks, attention scaled by log(N) / sqrt(d_head)
                    | register 0 -> readout MLP                   (B, P + 1)
                    | undo the feature transform and the z-scoring
      hyperweights [w ; b]                                        (B, E + 1)

There is no positional encoding, so the output does not depend on the order of the support
set; padding (``mask == False``) is hidden from attention. Exact speed shortcuts live in
``_fastpath`` and are switched by :attr:`BraInCoRL.fast_paths`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _fastpath
from .errors import ConfigError

__all__ = ["ModelConfig", "BraInCoRL", "fit_braincorl", "pca_feature_transform"]

ArrayLike = Union[np.ndarray, torch.Tensor]
CHOICES = {"token_features": ("xy", "concat_xy"), "block": ("lite", "official"),
           "log_n_on": ("logits", "query_input")}
RESPONSE_STD_FLOOR = 1e-6  # a constant support set has std 0


@dataclass
class ModelConfig:
    """Hyperparameters of :class:`BraInCoRL`; the defaults are :meth:`lite`.

    :meth:`paper` is the published CLIP model, layer for layer the official code (97,074,852
    parameters; :mod:`braincorl_lite.convert` loads its weights). ``lite`` differs by size, no
    dropout, the ``"lite"`` MLP block (one LayerNorm, GELU: affine in ``x`` after the norm, which
    the shared-image shortcut needs), log(N) on the logits, response normalisation, and registers
    initialised at ``0.02 * randn``. ``block="official"`` uses ``skip(z) + fc2(drop(act(
    hidden_norm(fc1(drop(act(norm(z))))))))`` with LeakyReLU(0.1) and no final LayerNorm.
    """

    n_features: int = 512  # E, the dimension of the image embeddings
    d_model: int = 128  # d, the width of the tokens
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads
    ffn_hidden: int = 256  # SwiGLU hidden width
    n_registers: int = 4  # learned register tokens; the encoder is read out of register 0
    token_hidden: Optional[int] = None  # token-embedding MLP hidden width (None: 2 d)
    readout_hidden: Optional[int] = None  # readout MLP hidden width (None: 2 d)
    dropout: float = 0.0  # in the MLPs, on the input tokens and in attention
    token_features: str = "xy"  # tokens [x ; y] (published) or "concat_xy": [x ; y ; x * y]
    response_norm: bool = True  # z-score each voxel's support responses (not in the paper)
    log_n_scaling: bool = True  # sharpen attention by log(N), N real tokens incl. registers
    n_components: Optional[int] = None  # P, dimension of the fixed feature transform (None: E)
    block: str = "lite"  # MLP blocks: "lite" or "official" (see above)
    log_n_on: str = "logits"  # log(N) multiplies the logits, or "query_input" (official)

    def __post_init__(self):
        for name in ("n_features", "d_model", "n_layers", "n_heads", "ffn_hidden", "n_registers",
                     "token_hidden", "readout_hidden", "n_components"):
            value = getattr(self, name)
            if value is None and name in ("token_hidden", "readout_hidden", "n_components"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))  # plain int, so that to_dict() is JSON-ready
        self.dropout, self.response_norm = float(self.dropout), bool(self.response_norm)
        self.log_n_scaling = bool(self.log_n_scaling)
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.n_components is not None and self.n_components > self.n_features:
            raise ConfigError(f"n_components ({self.n_components}) cannot exceed n_features ({self.n_features})")

    @property
    def feature_dim(self) -> int:
        """``P``, the dimension of the features the transformer sees."""
        return self.n_features if self.n_components is None else self.n_components

    @property
    def token_dim(self) -> int:
        """Length of one input token before embedding."""
        return (2 if self.token_features == "concat_xy" else 1) * self.feature_dim + 1

    @classmethod
    def lite(cls, **overrides) -> "ModelConfig":
        """The small CPU configuration (about 1.1M parameters); keywords override fields."""
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides) -> "ModelConfig":
        """The published CLIP configuration (97,074,852 parameters); keywords override fields."""
        values = dict(n_features=512, d_model=560, n_layers=20, n_heads=10, ffn_hidden=2048,
                      n_registers=4, token_hidden=1120, readout_hidden=1120, dropout=0.5,
                      response_norm=False, block="official", log_n_on="query_input")
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict:
        """Plain ``dict`` of the fields (JSON serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        if not isinstance(values, dict):
            raise ConfigError(f"a ModelConfig must be given as a dict, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {unknown}")
        return cls(**values)


# ---------------------------------------------------------------------------------------- blocks
class ResidualMLP(nn.Module):
    """``skip(z) + fc2(drop(gelu(fc1(norm(z)))))``, ``skip`` linear when the widths differ."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0, pre_norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d_in) if pre_norm else nn.Identity()
        self.fc1, self.act = nn.Linear(d_in, d_hidden), nn.GELU()
        self.drop, self.fc2 = nn.Dropout(dropout), nn.Linear(d_hidden, d_out)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()

    def forward(self, z):
        return self.skip(z) + self.fc2(self.drop(self.act(self.fc1(self.norm(z)))))


class OfficialResidualMLP(nn.Module):
    """``skip(z) + fc2(drop(act(hidden_norm(fc1(drop(act(norm(z))))))))``, act = LeakyReLU(0.1)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.norm, self.fc1 = nn.LayerNorm(d_in), nn.Linear(d_in, d_hidden)
        self.hidden_norm, self.fc2 = nn.LayerNorm(d_hidden), nn.Linear(d_hidden, d_out)
        self.act, self.drop = nn.LeakyReLU(0.1), nn.Dropout(dropout)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()

    def forward(self, z):
        h = self.fc1(self.drop(self.act(self.norm(z))))
        return self.skip(z) + self.fc2(self.drop(self.act(self.hidden_norm(h))))


class SwiGLU(nn.Module):
    """``down(silu(gate(z)) * up(z))``, ``gate`` and ``up`` in one linear layer."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up, self.down = nn.Linear(d_model, 2 * hidden), nn.Linear(hidden, d_model)

    def forward(self, z):
        gate, up = self.gate_up(z).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key mask and log(N) scaling.

    ``qkv`` is one linear layer (queries, keys, values), the layout of
    ``nn.MultiheadAttention.in_proj``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, log_n_on: str = "logits"):
        super().__init__()
        self.n_heads, self.dropout, self.log_n_on = n_heads, dropout, log_n_on
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)

    def forward(self, z, key_mask=None, log_n=None, return_attention=False):
        B, N, d = z.shape
        q, k, v = self.qkv(z).view(B, N, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        heads, probs = self.attend(self.scale_queries(q, log_n), k, v, key_mask, return_attention)
        return self.out(heads.transpose(1, 2).reshape(B, N, d)), probs

    def scale_queries(self, q, log_n):
        """Queries (B, heads, N, head_dim) times ``log_n`` (a float or one per sequence, (B,)).

        With ``log_n_on="query_input"`` the projection's input is scaled, so not the query bias.
        """
        if log_n is None:
            return q
        if torch.is_tensor(log_n):
            log_n = log_n.view(-1, 1, 1, 1).to(q.dtype)
        if self.log_n_on == "logits":
            return q * log_n
        bias = self.qkv.bias[: q.shape[1] * q.shape[3]].view(q.shape[1], 1, -1).to(q.dtype)
        return (q - bias) * log_n + bias

    def attend(self, q, k, v, key_mask, return_attention=False):
        """Softmax attention ``(q k^T / sqrt(head_dim)) v``; also the probabilities if asked."""
        mask = None if key_mask is None else key_mask[:, None, None, :]
        p_drop = self.dropout if self.training else 0.0
        if not return_attention:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop), None
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        probs = logits.softmax(dim=-1)
        return F.dropout(probs, p_drop, self.training) @ v, probs


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``z + drop(attn(norm(z)))``, then ``z + [drop](ffn(norm(z)))``."""

    def __init__(self, d_model, n_heads, ffn_hidden, dropout=0.0, ffn_dropout=True, log_n_on="logits"):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout, log_n_on)
        self.ffn_norm, self.ffn = nn.LayerNorm(d_model), SwiGLU(d_model, ffn_hidden)
        self.drop, self.ffn_dropout = nn.Dropout(dropout), ffn_dropout

    def forward(self, z, key_mask=None, log_n=None, return_attention=False):
        update, probs = self.attn(self.attn_norm(z), key_mask, log_n, return_attention)
        return self.feed_forward(z + self.drop(update)), probs

    def feed_forward(self, z):
        ffn = self.ffn(self.ffn_norm(z))
        return z + (self.drop(ffn) if self.ffn_dropout else ffn)


# ------------------------------------------------------------------------------------- the model
class BraInCoRL(nn.Module):
    """In-context transformer that predicts one linear encoder per voxel from support examples.

    Parameters
    ----------
    config : ModelConfig, optional
        Architecture; defaults to :meth:`ModelConfig.lite`.

    Examples
    --------
    >>> model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=2)).eval()
    >>> hw = model(torch.randn(50, 16), torch.randn(8, 50))   # 50 shared images, 8 voxels
    >>> hw.shape                                               # [w ; b] per voxel
    torch.Size([8, 17])
    """

    def __init__(self, config: Optional[ModelConfig] = None):
        super().__init__()
        self.config = cfg = config if config is not None else ModelConfig.lite()
        d, E, P = cfg.d_model, cfg.n_features, cfg.feature_dim
        official = cfg.block == "official"
        #: use the exact shortcuts of ``_fastpath`` (False for the plain forward)
        self.fast_paths = True

        # fixed (not trained) feature transform x' = (x - feature_mean) @ feature_proj
        self.register_buffer("feature_mean", torch.zeros(E))
        self.register_buffer("feature_proj", torch.eye(E, P))
        self._identity_transform = P == E
        self.register_load_state_dict_post_hook(lambda module, _: module._refresh_identity_flag())

        mlp = OfficialResidualMLP if official else ResidualMLP
        self.token_embed = mlp(cfg.token_dim, cfg.token_hidden or 2 * d, d, cfg.dropout)
        registers = torch.randn(cfg.n_registers, d)
        self.registers = nn.Parameter(registers / math.sqrt(d + 1) if official else registers * 0.02)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.n_heads, cfg.ffn_hidden, cfg.dropout, not official, cfg.log_n_on)
            for _ in range(cfg.n_layers))
        if official:  # the official readout block normalises its own input
            self.final_norm = nn.Identity()
            self.readout = OfficialResidualMLP(d, cfg.readout_hidden or 2 * d, P + 1, cfg.dropout)
        else:
            self.final_norm = nn.LayerNorm(d)
            self.readout = ResidualMLP(d, cfg.readout_hidden or 2 * d, P + 1, cfg.dropout, pre_norm=False)
        # start at the zero encoder (the support mean with response_norm): a stable first step
        for layer in (self.readout.fc2, self.readout.skip):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, support_x, support_y, mask=None, return_attention=False):
        """Hyperweights of a batch of voxels from their support sets.

        Parameters
        ----------
        support_x : Tensor, shape (B, K, E) or (K, E)
            Image embeddings; a 2-D tensor is shared by all ``B`` voxels.
        support_y : Tensor, shape (B, K)
            Responses of each voxel to its support images.
        mask : bool Tensor, shape (B, K), optional
            True for real support pairs; padded positions may hold anything, even NaN.
        return_attention : bool
            Also return each block's attention probabilities (B, heads, R + K, R + K), tokens
            ordered registers first, then the support pairs.

        Returns
        -------
        hyperweights : Tensor, shape (B, E + 1)
            ``[w ; b]`` in the original feature space: responses are ``x @ w + b``.
        """
        cfg = self.config
        x, y, mask = self._check_inputs(support_x, support_y, mask)
        B, K = y.shape

        # 1. responses: hide the padding, z-score each voxel's support set
        if mask is not None:
            y = y.masked_fill(~mask, 0.0)
        if cfg.response_norm:
            y_mean, y_std = _masked_mean_std(y, mask)
            y = (y - y_mean[:, None]) / y_std[:, None]

        # 2. tokens [x' ; y'] (or [x' ; y' ; x' * y']), embedded to width d
        if not self._identity_transform:
            x = (x - self.feature_mean) @ self.feature_proj
        if self.fast_paths and x.dim() == 2 and _fastpath.can_embed_shared_images(self):
            tokens = _fastpath.embed_shared_images(self, x, y)
        else:
            x, y1 = x.expand(B, K, x.shape[-1]), y[..., None]
            parts = [x, y1, x * y1] if cfg.token_features == "concat_xy" else [x, y1]
            tokens = self.token_embed(torch.cat(parts, dim=-1))
        if mask is not None:
            tokens = tokens.masked_fill(~mask[..., None], 0.0)

        # 3. registers first, then the support tokens; no positional encoding
        z = torch.cat([self.registers.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)
        z = self.embed_drop(z)
        key_mask = None if mask is None else torch.cat([mask.new_ones(B, cfg.n_registers), mask], 1)
        log_n = None  # log(N), N = the real tokens of each sequence
        if cfg.log_n_scaling:
            log_n = (math.log(cfg.n_registers + K) if mask is None
                     else torch.log((mask.sum(dim=1) + cfg.n_registers).float()))
        attention = []
        for i, block in enumerate(self.blocks):
            if self.fast_paths and not return_attention and i == len(self.blocks) - 1:
                z = _fastpath.register_only_block(block, z, key_mask, log_n)  # only register 0 is read
            else:
                z, probs = block(z, key_mask, log_n, return_attention)
                attention.append(probs)

        # 4. read out register 0, back to the original feature and response units
        out = self.readout(self.final_norm(z[:, 0]))
        w, b = out[:, :-1], out[:, -1]
        if not self._identity_transform:
            w = w @ self.feature_proj.T
            b = b - w @ self.feature_mean
        if cfg.response_norm:
            w, b = w * y_std[:, None], b * y_std + y_mean
        hyperweights = torch.cat([w, b[:, None]], dim=1)
        return (hyperweights, attention) if return_attention else hyperweights

    def _check_inputs(self, support_x, support_y, mask):
        if support_y.dim() != 2:
            raise ValueError(f"support_y must have shape (B, K), got {tuple(support_y.shape)}")
        (B, K), E = support_y.shape, self.config.n_features
        if tuple(support_x.shape) not in ((K, E), (B, K, E)):
            raise ValueError(f"support_x must have shape (K, E) or (B, K, E) = {(B, K, E)} given "
                             f"support_y of shape {(B, K)}; got {tuple(support_x.shape)}")
        if mask is not None and (tuple(mask.shape) != (B, K) or mask.dtype != torch.bool):
            raise ValueError(f"mask must be a bool tensor of shape {(B, K)}, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        dtype = self.registers.dtype  # contiguous responses keep later products fast
        return support_x.to(dtype), support_y.to(dtype).contiguous(), mask

    def n_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters; buffers are not counted."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return self.registers.device

    def extra_repr(self) -> str:
        return repr(self.config)

    @torch.no_grad()
    def set_feature_transform(self, mean: ArrayLike, proj: ArrayLike) -> None:
        """Install the fixed feature transform ``x' = (x - mean) @ proj`` (set it before training).

        ``mean`` is (E,), ``proj`` (E, P) with ``P = config.feature_dim`` (see
        :func:`pca_feature_transform`). It is saved with the model; hyperweights are always
        returned in the original space.
        """
        E, P = self.config.n_features, self.config.feature_dim
        mean, proj = torch.as_tensor(mean), torch.as_tensor(proj)
        if tuple(mean.shape) != (E,) or tuple(proj.shape) != (E, P):
            raise ValueError(f"feature transform must have mean of shape ({E},) and proj of shape ({E}, {P}); "
                             f"got {tuple(mean.shape)} and {tuple(proj.shape)} "
                             f"(set ModelConfig.n_components to change P)")
        if not (torch.isfinite(mean).all() and torch.isfinite(proj).all()):
            raise ValueError("feature transform contains NaN or inf")
        self.feature_mean.copy_(mean)
        self.feature_proj.copy_(proj)
        self._refresh_identity_flag()

    def reset_feature_transform(self) -> None:
        """Back to the default transform (identity, or the first ``P`` coordinates)."""
        E, P = self.config.n_features, self.config.feature_dim
        self.set_feature_transform(torch.zeros(E), torch.eye(E, P))

    def _refresh_identity_flag(self) -> None:
        """Skip the feature transform when it is the identity."""
        proj = self.feature_proj
        self._identity_transform = tuple(proj.shape) == (len(self.feature_mean),) * 2 and (
            proj.is_meta or (not self.feature_mean.any() and torch.equal(
                proj, torch.eye(len(proj), device=proj.device, dtype=proj.dtype))))


def _masked_mean_std(y, mask):
    """Mean and (population) std over the real entries of each row, std floored."""
    weight = torch.ones_like(y) if mask is None else mask.to(y.dtype)
    count = weight.sum(dim=1).clamp_min(1.0)
    mean = (y * weight).sum(dim=1) / count
    var = ((y - mean[:, None]).square() * weight).sum(dim=1) / count
    return mean, var.sqrt().clamp_min(RESPONSE_STD_FLOOR)


def fit_braincorl(model: BraInCoRL, X: ArrayLike, Y: ArrayLike, chunk_size: int = 512,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Linear encoders of many voxels from one support set: the in-context ``fit_ridge``.

    Parameters
    ----------
    model : BraInCoRL
        Runs on its own device, in eval mode (its mode is restored afterwards).
    X, Y : arrays, shapes (K, E) and (K, n_voxels)
        Support image embeddings and responses, as for ``fit_ridge``.
    chunk_size : int
        Voxels per forward pass; bounds memory.
    progress : bool
        Show a progress bar.

    Returns
    -------
    W : ndarray, shape (n_voxels, E)
    b : ndarray, shape (n_voxels,)
        One row per voxel, as ``fit_ridge`` gives; predicted responses to new images are
        ``predict_linear(X_new, W, b) = X_new @ W.T + b`` (float32).

    Examples
    --------
    >>> model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=1))
    >>> W, b = fit_braincorl(model, np.random.randn(30, 16), np.random.randn(30, 1000))
    >>> W.shape, b.shape
    ((1000, 16), (1000,))
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device, dtype = model.device, model.registers.dtype
    X, Y = torch.as_tensor(X).to(device, dtype), torch.as_tensor(Y)
    if Y.dim() != 2 or X.shape[:1] != Y.shape[:1]:
        raise ValueError(f"X must have shape (K, E) and Y (K, n_voxels), got {tuple(X.shape)} and {tuple(Y.shape)}")
    starts = range(0, Y.shape[1], chunk_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="predicting encoders", unit="chunk")
    hw = np.empty((Y.shape[1], model.config.n_features + 1), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in starts:
                y = Y[:, s:s + chunk_size].T.to(device, dtype)
                hw[s:s + chunk_size] = model(X, y).float().cpu().numpy()
    finally:
        model.train(was_training)
    return np.ascontiguousarray(hw[:, :-1]), hw[:, -1].copy()


def pca_feature_transform(features: ArrayLike, n_components: Optional[int] = None,
                          whiten: bool = False, eps: float = 1e-8):
    """A PCA (optionally whitening) basis for :meth:`BraInCoRL.set_feature_transform` (sklearn).

    Parameters
    ----------
    features : array, shape (n_images, E)
        Embeddings to fit the basis on.
    n_components : int, optional
        Components to keep (default ``min(n_images, E)``; set ``ModelConfig.n_components`` too).
    whiten : bool
        Divide each component by its standard deviation (plus ``eps``).

    Returns
    -------
    mean : ndarray, shape (E,)
    proj : ndarray, shape (E, n_components)

    Examples
    --------
    >>> mean, proj = pca_feature_transform(np.random.randn(100, 8), n_components=3, whiten=True)
    >>> proj.shape
    (8, 3)
    """
    from sklearn.decomposition import PCA

    X = np.asarray(features, dtype=np.float64)
    n = min(X.shape) if n_components is None else n_components
    if n > min(X.shape):
        raise ValueError(f"n_components={n} exceeds the rank bound {min(X.shape)}")
    pca = PCA(n_components=n, svd_solver="full").fit(X)
    proj = pca.components_.T
    if whiten:
        proj = proj / (np.sqrt(pca.explained_variance_) + eps)
    return pca.mean_.astype(np.float32), proj.astype(np.float32)
