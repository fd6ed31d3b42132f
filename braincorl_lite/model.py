"""The in-context encoder: a transformer that turns a few examples into a voxel's encoder.

BraInCoRL treats every voxel as a separate task. It receives ``K`` support pairs
``(x_i, beta_i)`` -- an image embedding ``x_i`` (``E`` numbers) and the voxel's response
``beta_i`` to that image -- and outputs the voxel's *linear encoding model*: ``E`` weights and a
bias, the "hyperweights". The response to any new image ``x`` is then the dot product
``x @ w + b``. No gradient step is taken at test time; the transformer does the fitting.

Data flow of :class:`BraInCoRL` for one batch of ``B`` voxels::

    support_x (B, K, E) or (K, E)      support_y (B, K)
            |                                 |
            |  optional fixed feature         |  optional per-voxel z-scoring
            |  transform x' = (x - m) @ P     |  y' = (y - mean) / std
            +---------------+-----------------+
                            |
            tokens [x' ; y'] (or [x' ; y' ; x' * y'])      (B, K, P + 1)
                            |
            token_embed: residual MLP                       (B, K, d)
                            |
            prepend n_registers learned register tokens     (B, R + K, d)
                            |
            blocks: pre-LN transformer blocks (self-attention with log(N)
                    scaling + SwiGLU feed-forward); no positional encoding
                            |
            register token 0 -> [final_norm] -> readout MLP (B, P + 1)
                            |
            undo the feature transform and the z-scoring    (B, E + 1) = [w ; b]

Because there is no positional encoding and the readout only looks at a register token, the
output does not depend on the order of the support set. Padding tokens (``mask == False``) are
hidden from attention, so support sets of different sizes can share a batch.

The module also holds the checkpoint format of the package: tensors in a ``safetensors`` file plus
a JSON sidecar with the configuration, free-form metadata, the list of tensors and a SHA-256 of
the tensor file. Nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BraInCoRLError, ConfigError

__all__ = [
    "ModelConfig",
    "BraInCoRL",
    "predict",
    "split_hyperweights",
    "predict_encoders",
    "pca_feature_transform",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "sidecar_path",
]

#: the allowed values of :attr:`ModelConfig.token_features`
TOKEN_FEATURES = ("xy", "concat_xy")

#: the allowed values of :attr:`ModelConfig.block`
BLOCKS = ("lite", "official")

#: the allowed values of :attr:`ModelConfig.log_n_on`
LOG_N_TARGETS = ("logits", "query_input")

#: floor on the standard deviation used by ``response_norm`` (a constant support set has std 0)
RESPONSE_STD_FLOOR = 1e-6

#: name and version written into every checkpoint sidecar
CHECKPOINT_FORMAT = "braincorl_lite.checkpoint"
CHECKPOINT_VERSION = 1

ArrayLike = Union[np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Hyperparameters of :class:`BraInCoRL`.

    The defaults are the ``lite`` configuration (small enough to meta-train on a laptop CPU);
    :meth:`paper` gives the published CLIP configuration, layer for layer the architecture of
    the official code (97,074,852 parameters; :mod:`braincorl_lite.convert` loads its weights).

    How ``lite()`` simplifies the paper, and why:

    - size d = 128, 4 blocks, 4 heads, FFN 256 (paper 560, 20, 10, 2048): meta-trains on a CPU.
    - ``dropout=0`` (paper 0.5): endless fresh synthetic tasks leave nothing to overfit.
    - ``block="lite"``: one-hidden-layer GELU MLPs with one LayerNorm (paper: two LayerNorms,
      LeakyReLU, dropout before each linear) keep the token MLP affine in ``x`` after the norm,
      which the exact shared-image shortcut needs; a final LayerNorm stands in for the readout
      block's input norm, and dropout also sits on the feed-forward output.
    - ``log_n_on="logits"`` (paper: query input): log(N) folds into the attention's scale, one
      fused projection; the two placements differ only through the query bias.
    - ``response_norm=True`` (not in the paper): exact equivariance to the response units.
    - registers start at ``0.02 * randn`` (paper ``randn / sqrt(d + 1)``): initialisation only.

    Both configurations start the readout's last layers at zero (the zero encoder), a training
    choice of this package; ``token_features="concat_xy"`` and ``n_components`` are opt-in
    extensions that are off in both.

    Attributes
    ----------
    n_features : int
        ``E``, the dimension of the image embeddings (512 for CLIP ViT-B/32).
    d_model : int
        ``d``, the width of the tokens inside the transformer.
    n_layers : int
        Number of transformer blocks.
    n_heads : int
        Number of attention heads; must divide ``d_model``.
    ffn_hidden : int
        Hidden width of the SwiGLU feed-forward network of each block.
    n_registers : int
        Number of learned register tokens prepended to the support tokens (at least 1; the
        hyperweights are read out from register 0).
    token_hidden : int or None
        Hidden width of the token-embedding MLP; ``None`` means ``2 * d_model``.
    readout_hidden : int or None
        Hidden width of the readout MLP; ``None`` means ``2 * d_model``.
    dropout : float
        Dropout probability: inside the token-embedding and readout MLPs, on the input tokens,
        the attention probabilities and the attention output, and (``block="lite"`` only) on the
        feed-forward output.
    token_features : {"xy", "concat_xy"}
        ``"xy"``: each token is ``[x_i ; beta_i]``, as published. ``"concat_xy"`` also appends
        ``x_i * beta_i`` so that the product that a least-squares fit needs is exposed directly.
    response_norm : bool
        If True, the support responses of each voxel are z-scored before tokenisation and the
        scale is restored at the output, which makes the model exactly equivariant to
        ``y -> a * y + c`` (``a > 0``). Not part of the published model.
    log_n_scaling : bool
        If True, attention is sharpened by ``log(N)``, with ``N`` the number of real tokens
        (registers included) of the sequence, as published (where, see ``log_n_on``). This
        keeps attention sharp when the model sees more support images than during training.
    n_components : int or None
        Dimension ``P`` of the optional fixed feature transform (see
        :meth:`BraInCoRL.set_feature_transform`). ``None`` means ``P = E`` (the transform starts
        as the identity).
    block : {"lite", "official"}
        ``"lite"``: residual MLPs ``skip(z) + fc2(drop(gelu(fc1(norm(z)))))``, a final LayerNorm
        before the readout, dropout on the feed-forward output too. ``"official"``: the
        official code's pre-activation residual block ``skip(z) + fc2(drop(act(norm2(fc1(drop(
        act(norm1(z))))))))`` with ``act = LeakyReLU(0.1)``, no final LayerNorm (the readout
        block starts with its own), no dropout on the feed-forward output, and the official
        register initialisation. Older checkpoints have no such key and are ``"lite"``.
    log_n_on : {"logits", "query_input"}
        Where ``log(N)`` acts when ``log_n_scaling`` is on. ``"logits"``: it multiplies the
        logits ``q . k``. ``"query_input"``: it multiplies the (normalised) tokens before the
        query projection, as in the official code, so the query bias is not scaled.
    """

    n_features: int = 512
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_hidden: int = 256
    n_registers: int = 4
    token_hidden: Optional[int] = None
    readout_hidden: Optional[int] = None
    dropout: float = 0.0
    token_features: str = "xy"
    response_norm: bool = True
    log_n_scaling: bool = True
    n_components: Optional[int] = None
    block: str = "lite"
    log_n_on: str = "logits"

    def __post_init__(self):
        sizes = ["n_features", "d_model", "n_layers", "n_heads", "ffn_hidden", "n_registers"]
        optional_sizes = ["token_hidden", "readout_hidden", "n_components"]
        for name in sizes + optional_sizes:
            value = getattr(self, name)
            if value is None and name in optional_sizes:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))  # plain int, so that to_dict() is JSON-ready
        self.dropout = float(self.dropout)
        self.response_norm = bool(self.response_norm)
        self.log_n_scaling = bool(self.log_n_scaling)
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name, allowed in (("token_features", TOKEN_FEATURES), ("block", BLOCKS),
                              ("log_n_on", LOG_N_TARGETS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"ModelConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.n_components is not None and self.n_components > self.n_features:
            raise ConfigError(
                f"n_components ({self.n_components}) cannot exceed n_features "
                f"({self.n_features})"
            )

    # derived sizes ---------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """``P``, the dimension of the features the transformer sees."""
        return self.n_features if self.n_components is None else self.n_components

    @property
    def token_dim(self) -> int:
        """Length of one input token before embedding."""
        p = self.feature_dim
        return 2 * p + 1 if self.token_features == "concat_xy" else p + 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # presets ---------------------------------------------------------------------------------
    @classmethod
    def lite(cls, **overrides) -> "ModelConfig":
        """A small configuration (about 1.1M parameters) for CPU meta-training.

        d = 128, 4 blocks, 4 heads, SwiGLU hidden 256, no dropout, response normalisation on.
        Keyword arguments override single fields.
        """
        return cls(**overrides)

    @classmethod
    def paper(cls, **overrides) -> "ModelConfig":
        """The published CLIP configuration: the official architecture, 97,074,852 parameters.

        E = 512, d = 560, 20 blocks, 10 heads, SwiGLU hidden 2048, 4 registers, official
        residual blocks of hidden width 2 d = 1120 for the token MLP and the readout, dropout
        0.5, plain ``[x ; beta]`` tokens, no response normalisation, log(N) on the attention's
        query input. Keyword arguments override single fields.
        """
        values = dict(
            n_features=512,
            d_model=560,
            n_layers=20,
            n_heads=10,
            ffn_hidden=2048,
            n_registers=4,
            token_hidden=1120,
            readout_hidden=1120,
            dropout=0.5,
            token_features="xy",
            response_norm=False,
            log_n_scaling=True,
            n_components=None,
            block="official",
            log_n_on="query_input",
        )
        values.update(overrides)
        return cls(**values)

    # (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain ``dict`` of the fields (JSON serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults.

        The defaults of keys added after version 0.1 (``block``, ``log_n_on``) are the behaviour
        of the models saved before them.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"a ModelConfig must be given as a dict, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {unknown}")
        return cls(**values)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class ResidualMLP(nn.Module):
    """Two-layer MLP with a linear skip connection: ``skip(z) + fc2(drop(gelu(fc1(norm(z)))))``.

    Used to embed the tokens (``E + 1 -> d``) and to read out the hyperweights (``d -> E + 1``).

    Parameters
    ----------
    d_in, d_hidden, d_out : int
        Input, hidden and output widths.
    dropout : float
        Dropout on the hidden layer.
    pre_norm : bool
        Apply a LayerNorm to the input of the MLP branch (the skip path always sees the raw
        input).
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0,
                 pre_norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d_in) if pre_norm else nn.Identity()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_hidden, d_out)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.skip(z) + self.fc2(self.drop(self.act(self.fc1(self.norm(z)))))


class OfficialResidualMLP(nn.Module):
    """The official code's residual block (pre-activation, LayerNorm instead of BatchNorm).

    ``skip(z) + fc2(drop(act(hidden_norm(fc1(drop(act(norm(z))))))))`` with
    ``act = LeakyReLU(0.1)``: both linear layers see a normalised, activated, dropped-out input.
    ``skip`` is a linear bypass when the widths differ, else the identity.
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.hidden_norm = nn.LayerNorm(d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)
        self.act = nn.LeakyReLU(0.1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc1(self.drop(self.act(self.norm(z))))
        h = self.fc2(self.drop(self.act(self.hidden_norm(h))))
        return self.skip(z) + h


class SwiGLU(nn.Module):
    """Gated feed-forward network: ``down(silu(gate(z)) * up(z))``.

    ``gate`` and ``up`` are computed by one fused linear layer ``d -> 2 * hidden``.
    """

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(z).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SelfAttention(nn.Module):
    """Multi-head self-attention with externally supplied scales and key mask.

    The projections are one fused linear layer ``qkv`` (rows: queries, keys, values; heads
    contiguous within each), the layout of ``torch.nn.MultiheadAttention``'s ``in_proj``.

    Parameters
    ----------
    d_model, n_heads : int
        Token width and number of heads.
    dropout : float
        Dropout on the attention probabilities (training only).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, z, key_mask=None, scale=None, return_attention=False, first_only=False,
                query_scale=None):
        """Attend.

        Parameters
        ----------
        z : Tensor, shape (B, N, d)
        key_mask : bool Tensor, shape (B, N), optional
            True for tokens that may be attended to.
        scale : float or Tensor of shape (B, 1, 1, 1)
            Multiplier of the logits ``q . k`` (including ``1 / sqrt(head_dim)``).
        return_attention : bool
            Use the explicit implementation and also return the probabilities (B, heads, N, N).
        first_only : bool
            Compute the output of token 0 only (shape (B, 1, d)): its query attends to every
            token, the other queries are skipped.
        query_scale : float or Tensor of shape (B, 1, 1), optional
            Multiplier of the tokens that enter the query projection (not the keys or values).
        """
        B, N, d = z.shape
        h, hd = self.n_heads, d // self.n_heads
        if first_only or query_scale is not None:  # queries from their own input
            zq = z[:, :1] if first_only else z
            if query_scale is not None:
                zq = zq * (query_scale.to(z.dtype) if torch.is_tensor(query_scale) else query_scale)
            q = F.linear(zq, self.qkv.weight[:d], self.qkv.bias[:d]).view(B, -1, h, hd).transpose(1, 2)
            k, v = F.linear(z, self.qkv.weight[d:], self.qkv.bias[d:]).view(B, N, 2, h, hd).permute(2, 0, 3, 1, 4)
            N = q.shape[2]
        else:
            q, k, v = self.qkv(z).view(B, N, 3, h, hd).permute(2, 0, 3, 1, 4)
        if scale is None:
            scale = 1.0 / math.sqrt(d // self.n_heads)
        if torch.is_tensor(scale):  # one scale per sequence: fold it into the queries
            q, scale = q * scale.to(q.dtype), 1.0
        mask = None if key_mask is None else key_mask[:, None, None, :]
        p_drop = self.dropout if self.training else 0.0

        probs = None
        if return_attention:
            logits = (q @ k.transpose(-2, -1)) * scale
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            probs = logits.softmax(dim=-1)
            heads = F.dropout(probs, p_drop, self.training) @ v
        else:
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop,
                                                   scale=scale)
        heads = heads.transpose(1, 2).reshape(B, N, d)
        return self.out(heads), probs


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``z + drop(attn(norm(z)))``, then ``z + ffn(norm(z))``.

    ``ffn_dropout`` also applies dropout to the feed-forward output (the lite block; the
    official block has none there).
    """

    def __init__(self, d_model: int, n_heads: int, ffn_hidden: int, dropout: float = 0.0,
                 ffn_dropout: bool = True):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = SwiGLU(d_model, ffn_hidden)
        self.drop = nn.Dropout(dropout)
        self.ffn_dropout = ffn_dropout

    def forward(self, z, key_mask=None, scale=None, return_attention=False, first_only=False,
                query_scale=None):
        """``first_only`` returns token 0 only, shape (B, 1, d) (see :class:`SelfAttention`)."""
        update, probs = self.attn(self.attn_norm(z), key_mask, scale, return_attention,
                                  first_only, query_scale)
        z = (z[:, :1] if first_only else z) + self.drop(update)
        ffn = self.ffn(self.ffn_norm(z))
        z = z + (self.drop(ffn) if self.ffn_dropout else ffn)
        return z, probs


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class BraInCoRL(nn.Module):
    """In-context transformer that predicts one linear encoder per voxel from support examples.

    Parameters
    ----------
    config : ModelConfig, optional
        Architecture; defaults to :meth:`ModelConfig.lite`.

    Notes
    -----
    The output ("hyperweights") of shape ``(B, E + 1)`` holds the weights ``w`` in columns
    ``:E`` and the bias ``b`` in the last column; the predicted response to an image embedding
    ``x`` is ``x @ w + b`` (see :func:`predict`). The hyperweights are always expressed in the
    original feature space, whatever feature transform the model uses internally.

    Examples
    --------
    >>> import torch
    >>> from braincorl_lite.model import BraInCoRL, ModelConfig
    >>> model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=2)).eval()
    >>> support_x = torch.randn(50, 16)          # 50 images seen by every voxel
    >>> support_y = torch.randn(8, 50)           # responses of 8 voxels
    >>> hw = model(support_x, support_y)
    >>> hw.shape
    torch.Size([8, 17])
    >>> model.predict(hw, torch.randn(20, 16)).shape   # 20 new images
    torch.Size([8, 20])
    """

    def __init__(self, config: Optional[ModelConfig] = None):
        super().__init__()
        self.config = config = config if config is not None else ModelConfig.lite()
        d = config.d_model
        E, P = config.n_features, config.feature_dim

        # fixed (not trained) feature transform x' = (x - feature_mean) @ feature_proj
        self.register_buffer("feature_mean", torch.zeros(E))
        self.register_buffer("feature_proj", torch.eye(E, P))
        self._identity_transform = P == E
        self.register_load_state_dict_post_hook(_refresh_identity_flag)

        official = config.block == "official"
        token_hidden = config.token_hidden or 2 * d
        readout_hidden = config.readout_hidden or 2 * d
        if official:
            self.token_embed = OfficialResidualMLP(config.token_dim, token_hidden, d,
                                                   config.dropout)
        else:
            self.token_embed = ResidualMLP(config.token_dim, token_hidden, d, config.dropout)
        #: use exact shortcuts (token embedding computed once per shared support image, last
        #: block for register 0 only); False runs the plain computation, for checks and benchmarks
        self.fast_paths = True
        if official:
            self.registers = nn.Parameter(torch.randn(config.n_registers, d) / math.sqrt(d + 1))
        else:
            self.registers = nn.Parameter(torch.randn(config.n_registers, d) * 0.02)
        self.embed_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.n_heads, config.ffn_hidden, config.dropout,
                             ffn_dropout=not official)
            for _ in range(config.n_layers)
        )
        if official:  # the readout block normalises its own input
            self.final_norm = nn.Identity()
            self.readout = OfficialResidualMLP(d, readout_hidden, P + 1, config.dropout)
        else:
            self.final_norm = nn.LayerNorm(d)
            self.readout = ResidualMLP(d, readout_hidden, P + 1, config.dropout, pre_norm=False)
        # start from the zero encoder (predict the support mean when response_norm is on):
        # the first loss is then the response variance, and training is stable from step one
        for layer in (self.readout.fc2, self.readout.skip):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---------------------------------------------------------------------------------------
    def n_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters; buffers are not counted."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return self.registers.device

    def extra_repr(self) -> str:
        c = self.config
        log_n = f"log_n_on={c.log_n_on!r}" if c.log_n_scaling else "log_n_scaling=False"
        return (f"E={c.n_features}, P={c.feature_dim}, tokens={c.token_features!r}, "
                f"block={c.block!r}, response_norm={c.response_norm}, {log_n}")

    # feature transform ---------------------------------------------------------------------
    @torch.no_grad()
    def set_feature_transform(self, mean: ArrayLike, proj: ArrayLike) -> None:
        """Install the fixed feature transform ``x' = (x - mean) @ proj``.

        Parameters
        ----------
        mean : array, shape (E,)
        proj : array, shape (E, P)
            ``P`` must equal ``config.feature_dim`` (``n_components``, or ``E`` if unset).
            A PCA or whitening basis from :func:`pca_feature_transform` is typical.

        Notes
        -----
        The transform is stored in the checkpoint (buffers ``feature_mean``, ``feature_proj``).
        Predicted hyperweights are mapped back to the original space, so callers never see it.
        Set it before training: a trained model depends on the basis it was trained with.
        """
        E, P = self.config.n_features, self.config.feature_dim
        mean, proj = torch.as_tensor(mean), torch.as_tensor(proj)
        if tuple(mean.shape) != (E,) or tuple(proj.shape) != (E, P):
            raise ValueError(
                f"feature transform must have mean of shape ({E},) and proj of shape ({E}, {P}); "
                f"got {tuple(mean.shape)} and {tuple(proj.shape)} "
                f"(set ModelConfig.n_components to change P)"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(proj).all()):
            raise ValueError("feature transform contains NaN or inf")
        self.feature_mean.copy_(mean)
        self.feature_proj.copy_(proj)
        _refresh_identity_flag(self, None)

    @torch.no_grad()
    def reset_feature_transform(self) -> None:
        """Back to the default transform (identity, or the first ``P`` coordinates)."""
        E, P = self.config.n_features, self.config.feature_dim
        self.set_feature_transform(torch.zeros(E), torch.eye(E, P))

    def _transform_features(self, x: torch.Tensor) -> torch.Tensor:
        if self._identity_transform:
            return x
        return (x - self.feature_mean) @ self.feature_proj

    # forward -------------------------------------------------------------------------------
    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor,
                mask: Optional[torch.Tensor] = None, return_attention: bool = False):
        """Predict the hyperweights of a batch of voxels from their support sets.

        Parameters
        ----------
        support_x : Tensor, shape (B, K, E) or (K, E)
            Image embeddings; a 2-D tensor is shared by all ``B`` voxels (broadcast, not copied).
        support_y : Tensor, shape (B, K)
            Responses of each voxel to its support images.
        mask : bool Tensor, shape (B, K), optional
            True for real support pairs, False for padding. Padded positions may hold any
            values (even NaN): they are ignored.
        return_attention : bool
            Also return the attention probabilities of every block, computed with an explicit
            (slower) implementation.

        Returns
        -------
        hyperweights : Tensor, shape (B, E + 1)
            ``[w ; b]`` in the original feature space.
        attention : list of Tensor, shape (B, n_heads, N, N)
            Only if ``return_attention``; one per block, ``N = n_registers + K``; token order is
            registers first, then the support pairs in input order.
        """
        cfg = self.config
        support_x, support_y, mask = self._check_inputs(support_x, support_y, mask)
        B, K = support_y.shape

        # 1. responses: hide padding, optionally z-score each voxel's support set
        if mask is not None:
            support_y = torch.where(mask, support_y, torch.zeros((), dtype=support_y.dtype,
                                                                  device=support_y.device))
        if cfg.response_norm:
            y_mean, y_std = _masked_mean_std(support_y, mask)
            support_y = (support_y - y_mean[:, None]) / y_std[:, None]

        # 2. tokens [x' ; y'] (and x' * y'), embedded to width d
        x = self._transform_features(support_x)
        if x.dim() == 2 and self.fast_paths and self._can_embed_shared_images():
            tokens = self._embed_shared_images(x, support_y)
        else:
            if x.dim() == 2:
                x = x.expand(B, K, x.shape[-1])
            y = support_y.unsqueeze(-1)
            parts = [x, y, x * y] if cfg.token_features == "concat_xy" else [x, y]
            tokens = self.token_embed(torch.cat(parts, dim=-1))
        if mask is not None:
            tokens = tokens.masked_fill(~mask[..., None], 0.0)

        # 3. registers first, then the support tokens; no positional encoding
        z = torch.cat([self.registers.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)
        z = self.embed_drop(z)
        key_mask = None
        if mask is not None:
            key_mask = torch.cat([mask.new_ones(B, cfg.n_registers), mask], dim=1)
        scale, query_scale = self._attention_scales(K, mask)

        attention = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # only register 0 is read out: the last block needs its output alone (exact)
            first_only = i == last and self.fast_paths and not return_attention
            z, probs = block(z, key_mask, scale, return_attention, first_only, query_scale)
            attention.append(probs)

        # 4. read out register 0, then map back to the original feature and response units
        out = self.readout(self.final_norm(z[:, 0]))
        w, b = out[:, :-1], out[:, -1]
        if not self._identity_transform:
            w = w @ self.feature_proj.T
            b = b - w @ self.feature_mean
        if cfg.response_norm:
            w = w * y_std[:, None]
            b = b * y_std + y_mean
        hyperweights = torch.cat([w, b[:, None]], dim=1)
        return (hyperweights, attention) if return_attention else hyperweights

    def _can_embed_shared_images(self) -> bool:
        """The shortcut needs the lite MLP (affine in ``x`` after the norm) with a linear skip."""
        return (type(self.token_embed) is ResidualMLP
                and isinstance(self.token_embed.norm, nn.LayerNorm)
                and isinstance(self.token_embed.skip, nn.Linear))

    def _embed_shared_images(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Token embedding when all voxels share the support images ``x`` (K, P); ``y`` is (B, K).

        Equal to ``token_embed([x ; y (; x * y)])`` but the products with ``x`` are computed once
        per image instead of once per (voxel, image): every term of the first layer and of the
        skip path is linear in ``x``, in ``y`` or in ``y * x``, and the LayerNorm statistics of a
        token follow from per-image sums of ``x`` and ``x**2``.
        """
        mlp = self.token_embed
        P = x.shape[-1]
        concat = self.config.token_features == "concat_xy"
        D = 2 * P + 1 if concat else P + 1
        gamma, beta, eps = mlp.norm.weight, mlp.norm.bias, mlp.norm.eps
        W1, b1 = mlp.fc1.weight, mlp.fc1.bias  # (H, D), (H,)
        S, sb = mlp.skip.weight, mlp.skip.bias  # (d, D), (d,)
        y3 = y.unsqueeze(-1)  # (B, K, 1)

        def split(W):  # columns acting on x, on y and on x * y
            return W[:, :P], W[:, P], (W[:, P + 1:] if concat else None)

        # LayerNorm statistics of each token from per-image sums
        sx, sxx = x.sum(-1), x.square().sum(-1)  # (K,)
        if concat:
            mean = (sx + y + y * sx) / D
            second = (sxx + y.square() + y.square() * sxx) / D
        else:
            mean = (sx + y) / D
            second = (sxx + y.square()) / D
        rstd = torch.rsqrt((second - mean.square()).clamp_min(0) + eps).unsqueeze(-1)  # (B, K, 1)
        mean = mean.unsqueeze(-1)
        # first layer: W1 @ ((t - mean) * rstd * gamma + beta) + b1
        Wg = W1 * gamma
        Ax, ay, Cx = split(Wg)
        lin = (x @ Ax.T) + y3 * ay  # (B, K, H)
        if concat:
            lin = lin + y3 * (x @ Cx.T)
        hidden = (lin - mean * Wg.sum(1)) * rstd + (W1 @ beta + b1)
        out = mlp.fc2(mlp.drop(mlp.act(hidden)))
        Sx, sy, Sxy = split(S)
        skip = (x @ Sx.T) + y3 * sy + sb
        if concat:
            skip = skip + y3 * (x @ Sxy.T)
        return out + skip

    def _attention_scales(self, K: int, mask: Optional[torch.Tensor]):
        """Multipliers ``(of the logits, of the query input)`` that implement log(N) scaling.

        ``N`` counts the real tokens of each sequence, registers included. The logit multiplier
        includes ``1 / sqrt(head_dim)``; the query-input one is ``None`` when unused. Each is a
        float, or one value per sequence when a mask makes ``N`` differ between sequences.
        """
        cfg = self.config
        base = 1.0 / math.sqrt(cfg.head_dim)
        if not cfg.log_n_scaling:
            return base, None
        R = cfg.n_registers
        if mask is None:
            log_n = math.log(R + K)
        else:
            log_n = torch.log((mask.sum(dim=1) + R).to(torch.float32))
        if cfg.log_n_on == "query_input":
            return base, (log_n if mask is None else log_n.view(-1, 1, 1))
        return (log_n * base if mask is None else (log_n * base).view(-1, 1, 1, 1)), None

    def _check_inputs(self, support_x, support_y, mask):
        E = self.config.n_features
        if support_y.dim() != 2:
            raise ValueError(f"support_y must have shape (B, K), got {tuple(support_y.shape)}")
        B, K = support_y.shape
        if support_x.dim() == 2:
            expected = (K, E)
        elif support_x.dim() == 3:
            expected = (B, K, E)
        else:
            expected = None
        if expected is None or tuple(support_x.shape) != expected:
            raise ValueError(
                f"support_x must have shape (K, E) or (B, K, E) = {(B, K, E)} given support_y of "
                f"shape {(B, K)}; got {tuple(support_x.shape)}"
            )
        if mask is not None:
            if tuple(mask.shape) != (B, K):
                raise ValueError(f"mask must have shape {(B, K)}, got {tuple(mask.shape)}")
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        dtype = self.registers.dtype
        # contiguous responses: a transposed betas matrix would otherwise give the (B, K, H)
        # intermediates a strided layout, which slows every later product
        return support_x.to(dtype), support_y.to(dtype).contiguous(), mask

    # prediction ----------------------------------------------------------------------------
    @staticmethod
    def predict(hyperweights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Predicted responses ``x @ w + b``; see :func:`predict`."""
        return predict(hyperweights, x)


def _masked_mean_std(y: torch.Tensor, mask: Optional[torch.Tensor]):
    """Mean and (population) std over the real entries of each row, std floored."""
    if mask is None:
        mean = y.mean(dim=1)
        var = (y - mean[:, None]).square().mean(dim=1)
    else:
        weight = mask.to(y.dtype)
        count = weight.sum(dim=1).clamp_min(1.0)
        mean = (y * weight).sum(dim=1) / count
        var = ((y - mean[:, None]).square() * weight).sum(dim=1) / count
    return mean, var.sqrt().clamp_min(RESPONSE_STD_FLOOR)


def _refresh_identity_flag(module: BraInCoRL, incompatible_keys) -> None:
    """Remember whether the feature transform is the identity (then it is skipped)."""
    E, P = module.config.n_features, module.config.feature_dim
    if module.feature_proj.is_meta:
        module._identity_transform = P == E
        return
    module._identity_transform = bool(
        P == E
        and not module.feature_mean.any()
        and torch.equal(module.feature_proj, torch.eye(E, device=module.feature_proj.device,
                                                       dtype=module.feature_proj.dtype))
    )


# --------------------------------------------------------------------------------------------
# Helpers around the model
# --------------------------------------------------------------------------------------------


def split_hyperweights(hyperweights):
    """Split ``(..., E + 1)`` hyperweights into weights ``(..., E)`` and bias ``(...)``."""
    return hyperweights[..., :-1], hyperweights[..., -1]


def predict(hyperweights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Responses predicted by linear encoders: ``beta_hat = x @ w + b``.

    Parameters
    ----------
    hyperweights : Tensor, shape (B, E + 1)
        Output of :class:`BraInCoRL` (weights, then bias).
    x : Tensor, shape (Q, E) or (B, Q, E)
        Query image embeddings, shared by all voxels or one set per voxel.

    Returns
    -------
    Tensor, shape (B, Q)

    Examples
    --------
    >>> import torch
    >>> hw = torch.tensor([[1.0, 2.0, 0.5]])        # w = (1, 2), b = 0.5
    >>> predict(hw, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    tensor([[3.5000, 2.5000]])
    """
    w, b = split_hyperweights(hyperweights)
    if x.dim() == 2:
        return w @ x.T + b[:, None]
    if x.dim() == 3:
        return torch.einsum("bqe,be->bq", x, w) + b[:, None]
    raise ValueError(f"x must have shape (Q, E) or (B, Q, E), got {tuple(x.shape)}")


def predict_encoders(model: BraInCoRL, support_x: ArrayLike, support_y: ArrayLike,
                     mask: Optional[ArrayLike] = None, chunk_size: int = 256,
                     progress: bool = False) -> np.ndarray:
    """Hyperweights of many voxels, computed chunk by chunk without gradients.

    Parameters
    ----------
    model : BraInCoRL
        Runs on its own device (CPU or CUDA), in eval mode (its mode is restored afterwards).
    support_x : array, shape (K, E) or (n_voxels, K, E)
        Support image embeddings, shared by all voxels or one set per voxel.
    support_y : array, shape (n_voxels, K)
        Support responses, one row per voxel (for a ``betas`` matrix of shape
        ``(n_images, n_voxels)`` pass ``betas[support_idx].T``).
    mask : bool array, shape (n_voxels, K), optional
        Padding mask, as in :meth:`BraInCoRL.forward`.
    chunk_size : int
        Voxels per forward pass; bounds memory.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    ndarray, shape (n_voxels, E + 1), float32
        Weights in columns ``:E``, bias in the last column.

    Examples
    --------
    >>> import numpy as np
    >>> model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=1))
    >>> hw = predict_encoders(model, np.random.randn(30, 16), np.random.randn(1000, 30))
    >>> hw.shape
    (1000, 17)
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device, dtype = model.device, model.registers.dtype
    support_y = torch.as_tensor(support_y)
    if support_y.dim() != 2:
        raise ValueError(f"support_y must have shape (n_voxels, K), got {tuple(support_y.shape)}")
    support_x = torch.as_tensor(support_x)
    shared = support_x.dim() == 2
    if shared:  # move the shared images once
        support_x = support_x.to(device=device, dtype=dtype)
    if mask is not None:
        mask = torch.as_tensor(mask)

    n_voxels = support_y.shape[0]
    starts = range(0, n_voxels, chunk_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="predicting encoders", unit="chunk")
    out = np.empty((n_voxels, model.config.n_features + 1), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in starts:
                sl = slice(start, start + chunk_size)
                x = support_x if shared else support_x[sl].to(device=device, dtype=dtype)
                y = support_y[sl].to(device=device, dtype=dtype)
                m = None if mask is None else mask[sl].to(device=device, dtype=torch.bool)
                out[sl] = model(x, y, m).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def fit_braincorl(model: BraInCoRL, X: ArrayLike, Y: ArrayLike, chunk_size: int = 512,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Linear encoders of many voxels from one support set, in one forward pass per chunk.

    The in-context counterpart of :func:`braincorl_lite.baselines.fit_ridge`: same arguments,
    same orientation, same return values, but no fitting, only inference.

    Parameters
    ----------
    model : BraInCoRL
        A meta-trained model (e.g. from :func:`load_pretrained`).
    X : array, shape (K, E)
        Support image embeddings.
    Y : array, shape (K, n_voxels)
        Support responses of every voxel to those images.
    chunk_size : int
        Voxels per forward pass; bounds memory.
    progress : bool
        Show a progress bar.

    Returns
    -------
    W : ndarray, shape (E, n_voxels)
    b : ndarray, shape (n_voxels,)
        Predicted responses to new images ``X_new`` are ``X_new @ W + b``.

    Examples
    --------
    >>> import numpy as np
    >>> model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=1))
    >>> W, b = fit_braincorl(model, np.random.randn(30, 16), np.random.randn(30, 1000))
    >>> W.shape, b.shape
    ((16, 1000), (1000,))
    """
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must have shape (K, n_voxels), got {Y.shape}")
    hw = predict_encoders(model, X, np.ascontiguousarray(Y.T), chunk_size=chunk_size, progress=progress)
    return np.ascontiguousarray(hw[:, :-1].T), hw[:, -1].copy()


def pca_feature_transform(features: ArrayLike, n_components: Optional[int] = None,
                          whiten: bool = False, eps: float = 1e-8):
    """A PCA (optionally whitening) basis for :meth:`BraInCoRL.set_feature_transform`.

    Parameters
    ----------
    features : array, shape (n_images, E)
        Embeddings to fit the basis on (e.g. all images of the training subjects).
    n_components : int, optional
        Number of principal components to keep (default: ``min(n_images, E)``; set
        ``ModelConfig.n_components`` to the same value).
    whiten : bool
        Divide each component by its standard deviation, so that ``x'`` has identity covariance.
    eps : float
        Added to the standard deviations before whitening.

    Returns
    -------
    mean : ndarray, shape (E,)
    proj : ndarray, shape (E, n_components)
    """
    X = np.asarray(features, dtype=np.float64)
    mean = X.mean(axis=0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    n = vt.shape[0] if n_components is None else n_components
    if n > vt.shape[0]:
        raise ValueError(f"n_components={n} exceeds the rank bound {vt.shape[0]}")
    proj = vt[:n].T
    if whiten:
        proj = proj / (s[:n] / math.sqrt(max(len(X) - 1, 1)) + eps)
    return mean.astype(np.float32), proj.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON sidecar
# --------------------------------------------------------------------------------------------


class CheckpointError(BraInCoRLError, ValueError):
    """A checkpoint is missing, corrupted, or does not match its configuration."""


def sidecar_path(path: Union[str, Path]) -> Path:
    """The JSON sidecar that belongs to the tensor file ``path`` (same folder, same stem)."""
    return Path(path).with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value):
    """Let numpy scalars and arrays (and paths) appear in checkpoint metadata."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"checkpoint metadata is not JSON serialisable: {type(value).__name__}")


def save_checkpoint(model: BraInCoRL, path: Union[str, Path],
                    metadata: Optional[dict] = None) -> tuple[Path, Path]:
    """Write ``model`` as a safetensors file plus a JSON sidecar.

    Parameters
    ----------
    model : BraInCoRL
    path : str or Path
        The tensor file, conventionally ``something.safetensors``; the sidecar is
        ``something.json`` next to it.
    metadata : dict, optional
        Free-form JSON-serialisable information (training stage, data, metrics...).

    Returns
    -------
    tensor_path, sidecar_path : Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> model = BraInCoRL(ModelConfig.lite(n_features=16, d_model=32, n_layers=1))
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(model, folder / "tiny.safetensors", {"stage": "demo"})
    >>> loaded, meta = load_checkpoint(folder / "tiny.safetensors")
    >>> meta["stage"]
    'demo'
    """
    from safetensors.torch import save_file

    from . import __version__

    path = Path(path)
    side = sidecar_path(path)
    if side == path:
        raise ValueError(f"the tensor file must not end in .json: {path}")
    tensors = {name: t.detach().to("cpu").contiguous()
               for name, t in model.state_dict().items()}
    # serialise the sidecar first so that bad metadata fails before anything is written
    sidecar = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "library_version": __version__,
        "tensor_file": path.name,
        "sha256": None,
        "config": model.config.to_dict(),
        "n_parameters": model.n_parameters(),
        "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                    for name, t in tensors.items()},
        "metadata": metadata if metadata is not None else {},
    }
    json.dumps(sidecar, default=_json_default)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    sidecar["sha256"] = _sha256(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=2, default=_json_default) + "\n")
    os.replace(tmp, side)
    return path, side


def load_checkpoint(path: Union[str, Path],
                    device: Optional[Union[str, torch.device]] = None
                    ) -> tuple[BraInCoRL, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or Path
        The safetensors file (its JSON sidecar must sit next to it).
    device : str or torch.device, optional
        Where to put the model (default CPU).

    Returns
    -------
    model : BraInCoRL
        In eval mode (call ``model.train()`` to continue training).
    metadata : dict
        The ``metadata`` given to :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError (a ValueError)
        If the tensor file or its sidecar is missing or unreadable, the sidecar lacks or has
        an invalid entry (format, version, SHA-256, configuration, metadata), the tensor file
        does not match the recorded SHA-256 (corrupted or truncated), the tensors do not match
        the configuration (missing, unexpected or differently shaped tensors), or a tensor is
        not float32 or holds NaN or inf.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    side = sidecar_path(path)
    if path.suffix == ".json" and path.is_file():
        raise CheckpointError(
            f"{path} is a checkpoint sidecar; pass the tensor file next to it (conventionally "
            f"{path.with_suffix('.safetensors').name})"
        )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a tensor file")
    if not path.is_file():
        hint = f" (its sidecar {side.name} exists, the tensor file does not)" if side.is_file() else ""
        raise CheckpointError(f"checkpoint {path} not found{hint}")
    if not side.is_file():
        raise CheckpointError(
            f"checkpoint sidecar {side} not found: a checkpoint is a tensor file plus a JSON "
            f"sidecar with the same stem (written by save_checkpoint)"
        )
    sidecar, config = _read_sidecar(side)

    actual = _sha256(path)
    if actual != sidecar["sha256"]:
        raise CheckpointError(
            f"checkpoint tensor file {path} is corrupted or was modified: its SHA-256 is "
            f"{actual}, the sidecar records {sidecar['sha256']}"
        )
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint tensor file {path} could not be read: {err}") from None

    with torch.device("meta"):
        model = BraInCoRL(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    _check_tensors(expected, {name: tuple(t.shape) for name, t in tensors.items()}, path, side)
    _check_values(tensors, path)

    # fresh (64-byte aligned) storage: tensors read from the file may sit at any offset, and
    # some CPU kernels round differently on unaligned memory; aligned copies keep a loaded
    # model bit-identical to the one that was saved
    tensors = {name: t.clone() for name, t in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model = model.to(device if device is not None else "cpu")
    return model.eval(), sidecar.get("metadata", {})


def _read_sidecar(side: Path) -> tuple[dict, ModelConfig]:
    """Parse and validate a sidecar; every problem is a :class:`CheckpointError` naming it."""
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint sidecar {side} is not valid JSON: {err}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"checkpoint sidecar {side} is not a text file (not UTF-8)") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint sidecar {side} could not be read: {err}") from None
    if not isinstance(sidecar, dict):
        raise CheckpointError(
            f"checkpoint sidecar {side} holds a JSON {type(sidecar).__name__}, not an object "
            f"with the {CHECKPOINT_FORMAT} entries"
        )
    if "format" not in sidecar:
        raise CheckpointError(f"checkpoint sidecar {side} has no 'format' entry: it is not a "
                              f"{CHECKPOINT_FORMAT} sidecar")
    if sidecar["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint sidecar {side} has format {sidecar['format']!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}")
    if sidecar.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{side} has format_version {sidecar.get('format_version')!r}; this version of the "
            f"package reads version {CHECKPOINT_VERSION}"
        )
    digest = sidecar.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)):
        raise CheckpointError(
            f"checkpoint sidecar {side} has no valid 'sha256' entry (64 lowercase hex digits), "
            f"got {digest!r}"
        )
    if "config" not in sidecar:
        raise CheckpointError(f"checkpoint sidecar {side} has no 'config' entry")
    if not isinstance(sidecar["config"], dict):
        raise CheckpointError(f"the 'config' entry of {side} must be a JSON object, got "
                              f"{type(sidecar['config']).__name__}")
    try:
        config = ModelConfig.from_dict(sidecar["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"invalid model configuration in {side}: {err}") from None
    if not isinstance(sidecar.get("metadata", {}), dict):
        raise CheckpointError(f"the 'metadata' entry of {side} must be a JSON object, got "
                              f"{type(sidecar['metadata']).__name__}")
    return sidecar, config


def _check_values(tensors: dict, path: Path) -> None:
    """Refuse tensors that are not float32 or hold NaN or inf (they would fail much later)."""
    problems = []
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype != torch.float32:
            problems.append(f"tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}, "
                            f"expected float32")
        elif not torch.isfinite(t).all():
            n_bad = int((~torch.isfinite(t)).sum())
            problems.append(f"tensor {name!r} has {n_bad} NaN or infinite value(s)")
    if problems:
        raise CheckpointError(f"checkpoint {path} cannot be used: " + "; ".join(problems))


def _check_tensors(expected: dict, found: dict, path: Path, side: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    for name in sorted(set(expected) & set(found)):
        if expected[name] != found[name]:
            problems.append(
                f"tensor {name!r} has shape {found[name]} in {path.name} but the configuration "
                f"expects {expected[name]}"
            )
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match the configuration in {side.name}: "
            + "; ".join(problems)
        )


PRETRAINED = {
    "simnsd_lite": "simnsd_lite.safetensors",
    "simnsd_lite_truth_ablation": "simnsd_lite_truth_ablation.safetensors",
}


def pretrained_path(name: str = "simnsd_lite") -> Path:
    """Path of a checkpoint that ships with the package (see ``MODEL_CARD.md`` beside it)."""
    if name not in PRETRAINED:
        raise CheckpointError(f"unknown pretrained model {name!r}; choose one of {sorted(PRETRAINED)}")
    return Path(__file__).resolve().parent / "checkpoints" / PRETRAINED[name]


def load_pretrained(name: str = "simnsd_lite", device: Optional[Union[str, torch.device]] = None
                    ) -> BraInCoRL:
    """A shipped meta-trained model, ready for :func:`fit_braincorl`.

    ``"simnsd_lite"`` is meta-trained on SimNSD's measured responses only;
    ``"simnsd_lite_truth_ablation"`` is the ablation supervised with SimNSD's true weights.
    The training metadata is in ``model.metadata``.
    """
    model, metadata = load_checkpoint(pretrained_path(name), device=device)
    model.metadata = metadata
    return model
