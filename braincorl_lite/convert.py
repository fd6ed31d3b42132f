"""Load the weights released with the official BraInCoRL code into a
:class:`~braincorl_lite.model.BraInCoRL`.

The official code (``scripts/model.py`` of the BraInCoRL repository) names its layers after its
own classes; :meth:`ModelConfig.paper <braincorl_lite.model.ModelConfig.paper>` builds the same
architecture under this package's names.
This module maps one naming onto the other, infers the sizes from the tensor shapes and checks
that every tensor is accounted for:

=========================================================  ===================================
official tensor                                            this package
=========================================================  ===================================
``cls_token`` (1, R, d)                                    ``registers`` (R, d)
``early_layers.0.block.{0,3,4,7}``, ``...bypass``          ``token_embed.{norm,fc1,``
                                                           ``hidden_norm,fc2}``, ``...skip``
``transformer.{i}.layer_norm_1``                           ``blocks.{i}.attn_norm``
``transformer.{i}.attn.in_proj_{weight,bias}``             ``blocks.{i}.attn.qkv``
``transformer.{i}.attn.out_proj``                          ``blocks.{i}.attn.out``
``transformer.{i}.layer_norm_2``                           ``blocks.{i}.ffn_norm``
``transformer.{i}.ffn.linear1`` / ``linear2``              ``blocks.{i}.ffn.gate_up`` / ``down``
``weight_pred.0.block.{0,3,4,7}``, ``...bypass``           ``readout.{norm,fc1,hidden_norm,fc2}``,
                                                           ``readout.skip``
=========================================================  ===================================

(In the official residual block, a ``nn.Sequential``, indices 0 and 4 are the LayerNorms, 3 and
7 the linear layers; the others are activations and dropouts, which hold no tensors.)

The number of heads is not visible in the shapes; every official preset uses 10. Dropout is
not stored either: the converted model is returned in eval mode, where dropout does nothing.

Examples
--------
>>> import torch
>>> from braincorl_lite.convert import load_official_model
>>> model = load_official_model("checkpoints/clip.ckpt")          # doctest: +SKIP
>>> hw = model(support_x, support_y)                                # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Union

import torch

from .checkpoint import CheckpointError
from .model import BraInCoRL, ModelConfig

__all__ = ["official_key_map", "infer_official_config", "load_official_model"]

def _weight_and_bias(pairs):
    return {f"{old}.{w}": f"{new}.{w}" for old, new in pairs for w in ("weight", "bias")}


#: official residual-block tensors (prefix-relative) and their names in this package
_RESIDUAL_BLOCK = _weight_and_bias([("block.0", "norm"), ("block.3", "fc1"), ("block.4", "hidden_norm"),
                                    ("block.7", "fc2"), ("bypass", "skip")])
#: official transformer-block tensors (prefix-relative) and their names in this package
_TRANSFORMER_BLOCK = {"attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
                      **_weight_and_bias([("layer_norm_1", "attn_norm"), ("attn.out_proj", "attn.out"),
                                          ("layer_norm_2", "ffn_norm"), ("ffn.linear1", "ffn.gate_up"),
                                          ("ffn.linear2", "ffn.down")])}

#: prefixes that wrappers (DistributedDataParallel, a parent module) put before every key
_WRAPPER_PREFIXES = ("module.", "model.")

StateDict = Mapping[str, torch.Tensor]


def official_key_map(n_layers: int) -> dict:
    """``{official tensor name: name in this package}`` for a model with ``n_layers`` blocks.

    Examples
    --------
    >>> official_key_map(20)["transformer.3.attn.in_proj_weight"]
    'blocks.3.attn.qkv.weight'
    >>> len(official_key_map(20))
    261
    """
    mapping = {"cls_token": "registers"}
    for old, new in _RESIDUAL_BLOCK.items():
        mapping[f"early_layers.0.{old}"] = f"token_embed.{new}"
        mapping[f"weight_pred.0.{old}"] = f"readout.{new}"
    for i in range(n_layers):
        for old, new in _TRANSFORMER_BLOCK.items():
            mapping[f"transformer.{i}.{old}"] = f"blocks.{i}.{new}"
    return mapping


def _read(source) -> dict:
    """The flat ``{name: tensor}`` dict of ``source`` (a mapping, or a file to read)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"official checkpoint {path} not found")
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                source = load_file(str(path), device="cpu")
            except (SafetensorError, OSError, ValueError) as err:
                raise CheckpointError(f"{path} could not be read: {err}") from None
        else:
            import pickle

            try:  # the restricted unpickler: tensors and plain containers only, no code
                source = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                raise CheckpointError(
                    f"{path} holds Python objects other than tensors, which this package does not unpickle "
                    f"({str(err).splitlines()[0]}); if you trust the file, extract its tensors with "
                    f"torch.load(path, weights_only=False)['state_dict'] and pass that dict instead") from None
            except (OSError, RuntimeError, EOFError) as err:
                raise CheckpointError(f"{path} could not be read: {err}") from None
    if not isinstance(source, Mapping):
        raise CheckpointError(f"an official checkpoint must be a dict of tensors, got {type(source).__name__}")
    # a Lightning checkpoint keeps the tensors under "state_dict", next to training state
    if isinstance(source.get("state_dict"), Mapping):
        source = source["state_dict"]
    state = dict(source)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    not_tensors = sorted(key for key, value in state.items() if not torch.is_tensor(value))
    if not_tensors:
        raise CheckpointError(f"official checkpoint entries that are not tensors: {not_tensors}")
    return state


def _n_layers(state: StateDict) -> int:
    """Number of transformer blocks; every official tensor name must be there, and no other."""
    indices = {int(m.group(1)) for key in state if (m := re.match(r"transformer\.(\d+)\.", key))}
    if not indices:
        raise CheckpointError("no official transformer tensors ('transformer.<i>....') found: this is not a "
                              "state dict of the official BraInCoRL model")
    n_layers, expected = max(indices) + 1, official_key_map(max(indices) + 1)
    missing, unknown = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    problems = ([f"missing tensors {missing}"] if missing else []) + ([f"unknown tensors {unknown}"] if unknown else [])
    if problems:
        raise CheckpointError(f"not a state dict of the official BraInCoRL model ({n_layers} transformer "
                              f"blocks found): " + "; ".join(problems))
    return n_layers


def infer_official_config(state_dict: StateDict, n_heads: int = 10,
                          dropout: float = 0.5) -> ModelConfig:
    """The configuration, in the style of :meth:`~braincorl_lite.model.ModelConfig.paper`, that fits an
    official state dict.

    ``n_features``, ``d_model``, ``n_layers``, ``n_registers``, ``ffn_hidden`` and the MLP
    widths are read off the tensor shapes; ``n_heads`` and ``dropout`` are not stored and are
    taken from the arguments (10 heads in every official preset).

    Raises
    ------
    CheckpointError
        If a tensor is missing or unknown (their names are listed).
    """
    state = _read(state_dict)
    n_layers = _n_layers(state)
    try:
        return ModelConfig.paper(
            n_features=state["early_layers.0.block.0.weight"].shape[0] - 1,
            d_model=state["cls_token"].shape[-1],
            n_layers=n_layers,
            n_heads=n_heads,
            ffn_hidden=state["transformer.0.ffn.linear2.weight"].shape[1],
            n_registers=state["cls_token"].shape[-2],
            token_hidden=state["early_layers.0.block.3.weight"].shape[0],
            readout_hidden=state["weight_pred.0.block.3.weight"].shape[0],
            dropout=dropout,
        )
    except (IndexError, ValueError) as err:  # e.g. d_model not divisible by n_heads
        raise CheckpointError(f"the official tensors do not describe a valid model: {err}") from None


def load_official_model(state_dict_or_path: Union[StateDict, str, Path], n_heads: int = 10,
                        dropout: float = 0.5) -> BraInCoRL:
    """A :class:`~braincorl_lite.model.BraInCoRL` holding the weights of an official checkpoint.

    Parameters
    ----------
    state_dict_or_path : dict of tensors, or path
        The official model's ``state_dict()``, a Lightning checkpoint dict (tensors under
        ``"state_dict"``), or a file holding either: ``.safetensors``, or a PyTorch file read
        with ``torch.load(weights_only=True)`` (no arbitrary Python objects are unpickled).
        Keys may carry a ``module.`` or ``model.`` prefix.
    n_heads : int
        Attention heads (not visible in the shapes; 10 in every official preset).
    dropout : float
        Dropout of the returned model if it is trained further.

    Returns
    -------
    BraInCoRL
        Configured as :meth:`ModelConfig.paper <braincorl_lite.model.ModelConfig.paper>` with the
        sizes of the checkpoint, in eval mode, on the CPU, in float32. Its output ``[w ; b]`` is
        the official ``weights`` output.

    Raises
    ------
    CheckpointError
        If tensors are missing, unknown, of the wrong shape, not floating point or not finite.
    """
    state = _read(state_dict_or_path)
    config = infer_official_config(state, n_heads=n_heads, dropout=dropout)
    model = BraInCoRL(config)
    ours = model.state_dict()
    converted, problems = {}, []
    for old, new in official_key_map(config.n_layers).items():
        tensor = state[old]
        if old == "cls_token" and tensor.dim() == 3 and tensor.shape[0] == 1:
            tensor = tensor[0]  # (1, R, d) -> (R, d)
        if tuple(tensor.shape) != tuple(ours[new].shape):
            problems.append(f"{old!r} has shape {tuple(state[old].shape)}, expected "
                            f"{tuple(ours[new].shape)}")
        elif not tensor.is_floating_point():
            problems.append(f"{old!r} has dtype {tensor.dtype}, expected a floating point type")
        elif not torch.isfinite(tensor).all():
            problems.append(f"{old!r} contains NaN or inf")
        else:
            converted[new] = tensor.detach().to(device="cpu", dtype=torch.float32).clone()
    if problems:
        raise CheckpointError("cannot convert the official checkpoint: " + "; ".join(problems))
    # the official model has no feature transform: keep the identity buffers
    for name in ("feature_mean", "feature_proj"):
        converted[name] = ours[name]
    model.load_state_dict(converted, strict=True)
    return model.eval()
