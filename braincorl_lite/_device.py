"""Where the work runs: the device (``"auto"`` or one that exists here) and the processes of ``torchrun``."""

from __future__ import annotations

from typing import Optional

from .errors import ConfigError

__all__ = ["resolve_device", "distributed", "ranks_param_diff"]


def resolve_device(device: Optional[str] = "auto") -> str:
    """The device to run on: the one named, after checking that it exists here, or the best one.

    Parameters
    ----------
    device : {"auto", None, "cpu", "cuda", "cuda:N", "mps"} or torch.device
        ``"auto"`` (or None) is ``"cuda"`` when a GPU is visible, else ``"cpu"``.

    Returns
    -------
    str
        A name that ``torch.device`` and ``.to()`` accept; else ``ConfigError`` says why.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("tpu9")
    Traceback (most recent call last):
    ...
    braincorl_lite.errors.ConfigError: device 'tpu9' is not a device: use auto, cpu, cuda or cuda:N
    """
    import torch

    if device is None or str(device) in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {str(device)!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), numbered from 0")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {str(device)!r}: MPS is not available on this machine; use cpu or auto")
    elif dev.type != "cpu":
        raise ConfigError(f"device {str(device)!r}: use auto, cpu, cuda or cuda:N")
    return str(dev)


def distributed():
    """``(rank, world_size, local_rank)``; joins the process group when started by ``torchrun``.

    >>> distributed()  # a single process
    (0, 1, 0)
    """
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def ranks_param_diff(model) -> float:
    """The largest difference between any rank's parameters and rank 0's (0 when in step)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)
