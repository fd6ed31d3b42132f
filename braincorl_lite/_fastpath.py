"""Exact speed shortcuts of :meth:`BraInCoRL.forward <braincorl_lite.model.BraInCoRL.forward>`.

Both give the plain forward's output (to float rounding, gradients included) and are used when
``model.fast_paths`` is True; ``tests/test_model.py`` checks the equivalence.

- :func:`embed_shared_images`: when all voxels share the support images, the token embedding's
  products with ``x`` are computed once per image instead of once per (voxel, image).
- :func:`register_only_block`: only register 0 is read out, so the last block computes the
  attention query and feed-forward of that token alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def can_embed_shared_images(model) -> bool:
    """The shortcut needs the lite token MLP (affine in ``x`` after its norm) with a linear skip."""
    return model.config.block == "lite" and isinstance(model.token_embed.skip, nn.Linear)


def embed_shared_images(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``model.token_embed([x ; y (; x * y)])`` for shared images ``x`` (K, P) and ``y`` (B, K).

    Every term of the first layer and of the skip path is linear in ``x``, ``y`` or ``y * x``,
    and the LayerNorm statistics of a token follow from per-image sums of ``x`` and ``x**2``.
    """
    mlp, P = model.token_embed, x.shape[-1]
    concat = model.config.token_features == "concat_xy"
    D = 2 * P + 1 if concat else P + 1
    y3 = y.unsqueeze(-1)  # (B, K, 1)

    def split(W):  # columns acting on x, on y and on x * y
        return W[:, :P], W[:, P], (W[:, P + 1:] if concat else None)

    sx, sxx = x.sum(-1), x.square().sum(-1)  # (K,)
    if concat:
        mean = (sx + y + y * sx) / D
        second = (sxx + y.square() + y.square() * sxx) / D
    else:
        mean, second = (sx + y) / D, (sxx + y.square()) / D
    norm = mlp.norm
    rstd = torch.rsqrt((second - mean.square()).clamp_min(0) + norm.eps).unsqueeze(-1)  # (B, K, 1)
    # first layer: fc1((t - mean) * rstd * gamma + beta)
    Wg = mlp.fc1.weight * norm.weight
    Ax, ay, Cx = split(Wg)
    lin = x @ Ax.T + y3 * ay  # (B, K, H)
    if concat:
        lin = lin + y3 * (x @ Cx.T)
    hidden = (lin - mean.unsqueeze(-1) * Wg.sum(1)) * rstd + (mlp.fc1.weight @ norm.bias + mlp.fc1.bias)
    Sx, sy, Sxy = split(mlp.skip.weight)
    skip = x @ Sx.T + y3 * sy + mlp.skip.bias
    if concat:
        skip = skip + y3 * (x @ Sxy.T)
    return mlp.fc2(mlp.drop(mlp.act(hidden))) + skip


def register_only_block(block, z, key_mask, log_n):
    """``block(z, key_mask, log_n)[0][:, :1]``: the output of token 0 only, shape (B, 1, d)."""
    attn, (B, N, d) = block.attn, z.shape
    u = block.attn_norm(z)
    q = F.linear(u[:, :1], attn.qkv.weight[:d], attn.qkv.bias[:d]).view(B, 1, attn.n_heads, -1).transpose(1, 2)
    kv = F.linear(u, attn.qkv.weight[d:], attn.qkv.bias[d:]).view(B, N, 2, attn.n_heads, -1)
    k, v = kv.permute(2, 0, 3, 1, 4)
    heads, _ = attn.attend(attn.scale_queries(q, log_n), k, v, key_mask)
    update = attn.out(heads.transpose(1, 2).reshape(B, 1, d))
    return block.feed_forward(z[:, :1] + block.drop(update))
