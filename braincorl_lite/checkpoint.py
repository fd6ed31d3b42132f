"""Checkpoints: one safetensors file holding the tensors, the
:class:`~braincorl_lite.model.ModelConfig` and metadata.

The header's metadata holds ``config`` and ``metadata`` as JSON strings; nothing is pickled.
Files of version 0.1 (tensors plus a ``.json`` sidecar of the same stem) still load.

>>> import tempfile, pathlib
>>> from braincorl_lite.model import BraInCoRL, ModelConfig
>>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.safetensors"
>>> _ = save_checkpoint(BraInCoRL(ModelConfig.lite(n_features=16, d_model=32)), path, {"stage": "demo"})
>>> model, meta = load_checkpoint(path)
>>> meta, model.config.d_model
({'stage': 'demo'}, 32)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .errors import BraInCoRLError
from .model import BraInCoRL, ModelConfig

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_pretrained",
           "pretrained_path", "PRETRAINED"]

#: the checkpoints that ship with the package (``checkpoints/MODEL_CARD.md`` describes them)
PRETRAINED = {
    "simnsd_lite": "simnsd_lite.safetensors",
    "simnsd_lite_truth_ablation": "simnsd_lite_truth_ablation.safetensors",
}


class CheckpointError(BraInCoRLError, ValueError):
    """A checkpoint is missing, unreadable, or does not match its configuration."""


def _json_default(value):
    """Let numpy scalars and arrays (and paths) appear in the metadata."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"checkpoint metadata is not JSON serialisable: {type(value).__name__}")


def save_checkpoint(model: BraInCoRL, path: Union[str, Path], metadata: Optional[dict] = None) -> Path:
    """Write ``model`` (and JSON-serialisable ``metadata``) to one safetensors file ``path``."""
    from safetensors.torch import save_file

    from .data import atomic_write

    header = {"format": "pt", "config": json.dumps(model.config.to_dict()),
              "metadata": json.dumps(metadata if metadata is not None else {}, default=_json_default)}
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def load_checkpoint(path: Union[str, Path], device: Optional[Union[str, torch.device]] = None
                    ) -> tuple[BraInCoRL, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    model : BraInCoRL
        On ``device`` (default CPU), in eval mode.
    metadata : dict

    Raises
    ------
    CheckpointError
        If the file is missing or unreadable, holds no valid configuration, or its tensors
        are missing, unexpected, of the wrong shape, not float32, or not finite.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        raise CheckpointError(f"{path} is a checkpoint sidecar; pass the tensor file next to it "
                              f"({path.with_suffix('.safetensors').name})")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a tensor file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from None
    if "config" in header:
        config = _parse(header["config"], "config", path)
        metadata = _parse(header.get("metadata", "{}"), "metadata", path)
    else:
        config, metadata = _read_sidecar(path)
    try:
        config = ModelConfig.from_dict(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"invalid model configuration in {path}: {err}") from None

    with torch.device("meta"):
        model = BraInCoRL(config)
    _check_tensors(model.state_dict(), tensors, path)
    # fresh, aligned copies: some CPU kernels round differently on unaligned memory
    model.load_state_dict({n: t.clone() for n, t in tensors.items()}, strict=True, assign=True)
    return model.to(device if device is not None else "cpu").eval(), metadata


def _parse(text: str, entry: str, path: Path) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"the '{entry}' entry of {path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"the '{entry}' entry of {path} must be a JSON object, got {type(value).__name__}")
    return value


def _read_sidecar(path: Path) -> tuple[dict, dict]:
    """Configuration and metadata of a version-0.1 checkpoint, from its ``.json`` sidecar."""
    side = path.with_suffix(".json")
    if not side.is_file():
        raise CheckpointError(f"{path} holds no model configuration: not written by save_checkpoint, "
                              f"and no sidecar {side.name} (the format of version 0.1) next to it")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint sidecar {side} could not be read: {err}") from None
    if not isinstance(info, dict) or "config" not in info:
        raise CheckpointError(f"checkpoint sidecar {side} has no 'config' entry")
    if info.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != info["sha256"]:
        raise CheckpointError(f"checkpoint tensor file {path} is corrupted or was modified: its "
                              f"SHA-256 differs from the one in {side.name}")
    for entry in ("config", "metadata"):
        if not isinstance(info.get(entry, {}), dict):
            raise CheckpointError(f"the '{entry}' entry of {side} must be a JSON object, "
                                  f"got {type(info[entry]).__name__}")
    return info["config"], info.get("metadata", {})


def _check_tensors(expected: dict, found: dict, path: Path) -> None:
    """Refuse missing, unexpected, misshapen, non-float32 and non-finite tensors, naming them."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    problems = [f"{what} tensors {names}" for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
    for name in sorted(set(expected) & set(found)):
        t = found[name]
        if t.shape != expected[name].shape:
            problems.append(f"tensor {name!r} has shape {tuple(t.shape)} in {path.name} but the "
                            f"configuration expects {tuple(expected[name].shape)}")
        elif t.dtype != torch.float32:
            problems.append(f"tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}, expected float32")
        elif not torch.isfinite(t).all():
            problems.append(f"tensor {name!r} has {int((~torch.isfinite(t)).sum())} NaN or infinite value(s)")
    if problems:
        raise CheckpointError(f"checkpoint {path} cannot be used: " + "; ".join(problems))


def pretrained_path(name: str = "simnsd_lite") -> Path:
    """Path of a checkpoint that ships with the package (see :data:`PRETRAINED`)."""
    if name not in PRETRAINED:
        raise CheckpointError(f"unknown pretrained model {name!r}; choose one of {sorted(PRETRAINED)}")
    return Path(__file__).resolve().parent / "checkpoints" / PRETRAINED[name]


def load_pretrained(name: str = "simnsd_lite", device: Optional[Union[str, torch.device]] = None
                    ) -> BraInCoRL:
    """A shipped meta-trained model, ready for :func:`~braincorl_lite.model.fit_braincorl`.

    ``"simnsd_lite"`` is meta-trained on SimNSD's measured responses;
    ``"simnsd_lite_truth_ablation"`` is supervised with SimNSD's true weights. The training
    metadata is in ``model.metadata``.

    >>> load_pretrained().metadata["dataset"]
    'simnsd'
    """
    model, metadata = load_checkpoint(pretrained_path(name), device=device)
    model.metadata = metadata
    return model
