"""The run folder of :func:`~braincorl_lite.training.train`: a kill at any moment leaves it resumable, bit for bit.

* ``checkpoint.pt`` — the resume state in *one* file (weights, AdamW state, random states, stage
  and step; ``torch.save``, read back with ``weights_only=True``). It is written to
  ``checkpoint.pt.tmp`` and renamed over the old one (``os.replace`` is atomic): this rename is
  the run's commit point.
* ``model.safetensors`` — the model for users, written just before each commit.
* ``log.jsonl`` — one JSON line per step; a resume cuts it back to the steps the checkpoint holds.
* ``train.lock`` — locked (``flock``) while a run writes the folder: a second run is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .data import atomic_write
from .errors import NonFiniteError, RunDirError

CHECKPOINT, LOCK, LOG = "checkpoint.pt", "train.lock", "log.jsonl"
STATE_FORMAT = "braincorl-lite-train-state/1"
LEGACY = ("state.json", "optimizer.safetensors")  # the hand-serialised resume state of old versions
_FIX = "use a new folder, or resume=False to start it over"


def commit(run_dir: Path, state: dict) -> None:
    """Write ``state`` as ``run_dir/checkpoint.pt``: all of it or, after a kill, none of it."""
    with atomic_write(run_dir / CHECKPOINT) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; Windows cannot open folders)
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(run_dir: Path, model, optimizer, generators: dict, rng, head: dict, extra: dict, data: str, log) -> None:
    """Export ``model.safetensors`` (metadata ``head`` and ``extra``), then commit ``checkpoint.pt``.

    ``head`` holds ``train_config``, ``stage``, ``step`` and ``train_seconds``; ``generators`` the
    run's torch generators and ``rng`` its numpy generator. The log is flushed to the disk first,
    so every step in a checkpoint is in the log.
    """
    from .checkpoint import save_checkpoint

    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteError(f"non-finite weights at stage {head['stage'] + 1} step {head['step']}: not saved "
                             f"({run_dir} keeps its last checkpoint); try a lower learning rate")
    log.flush()
    os.fsync(log.fileno())
    save_checkpoint(model, run_dir / "model.safetensors", metadata={**head, **extra})
    rngs = {**{k: g.get_state() for k, g in generators.items()}, "torch": torch.get_rng_state(),
            "numpy": rng.bit_generator.state}
    device = next(model.parameters()).device
    if device.type == "cuda":
        rngs["cuda"] = torch.cuda.get_rng_state(device)
    commit(run_dir, {**head, "format": STATE_FORMAT, "data": data, "model_config": model.config.to_dict(),
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rngs})


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def read_state(run_dir: Path) -> Optional[dict]:
    """The committed state of the run in ``run_dir``; None if there is none."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        if (run_dir / "state.json").exists():
            raise RunDirError(f"{run_dir} holds a run in an old layout (state.json, no {CHECKPOINT}) that this "
                              f"version cannot resume: {_FIX}")
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or overwritten: torch raises many types
        raise RunDirError(f"{path} is damaged and cannot be resumed ({_first_line(err)}): {_FIX}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RunDirError(f"{path} is not a braincorl-lite training checkpoint: {_FIX}")
    return state


def restore(state: dict, model, optimizer, generators: dict, rng, stage_steps: Sequence[int], run_dir) -> None:
    """Load a committed state into the run's model, optimiser and random generators; check that
    the model, the optimiser and the step agree (``stage_steps``: the steps of each stage)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise RunDirError(f"the checkpoint in {run_dir} does not fit its own recipe ({_first_line(err)}): "
                          f"use a new folder or resume=False") from None
    stage, step = state["stage"], state["step"]
    adam_steps = max((int(s["step"]) for s in optimizer.state.values()), default=0)
    if not (0 <= stage < len(stage_steps) and 0 <= step < stage_steps[stage]) \
            or adam_steps != steps_before(stage_steps, stage, step):
        raise RunDirError(f"the checkpoint in {run_dir} is inconsistent (stage {stage + 1} step {step}, but the "
                          f"optimiser has taken {adam_steps} steps): use a new folder or resume=False")
    saved = state["rng"]
    for key, gen in generators.items():
        gen.set_state(saved[key])
    torch.set_rng_state(saved["torch"])
    if "cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["cuda"])
    rng.bit_generator.state = saved["numpy"]


def steps_before(stage_steps: Sequence[int], stage: int, step: int) -> int:
    """Training steps done before ``step`` of ``stage``: the number of log lines at that point."""
    return sum(stage_steps[:stage]) + step


def cut_log(path: Path, n: int) -> None:
    """Keep the first ``n`` lines of the log (creating it): the steps that the checkpoint holds.

    Later lines were logged after the checkpoint by a run that then died; the resumed run logs them again.
    """
    kept = end = 0
    with open(path, "a+b") as fh:
        fh.seek(0)
        while kept < n:
            line = fh.readline()
            if not line.endswith(b"\n"):
                break
            kept, end = kept + 1, end + len(line)
        fh.truncate(end)
    if kept < n:
        warnings.warn(f"{path} holds {kept} of the {n} steps in the checkpoint: the log misses steps")


class Lock:
    """``run_dir/train.lock``, locked (``flock``) while a run writes the folder.

    The system drops the lock when its process ends, however it ends: a lock file left by a dead
    run is simply taken over. The file names the holder's PID. (No ``flock`` on Windows: no lock.)
    """

    def __init__(self, run_dir: Path):
        path = run_dir / LOCK
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise RunDirError(f"{run_dir} is in use by another training run (PID {holder}, lock {path}): "
                              f"wait for it or stop it, or use another folder") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        os.close(self.fd)  # closing the file drops the lock


class CtrlC:
    """Defers Ctrl-C (SIGINT) to the end of the current step, where the run can be saved whole.

    A second Ctrl-C stops at once, without saving. Only in the main thread of a single process
    (ranks of a distributed run would stop at different steps).
    """

    def __init__(self, run_dir: Path, enabled: bool):
        self.hit, self.run_dir, self.previous = False, run_dir, None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt(f"stopped without saving: {self.run_dir} resumes from its last checkpoint")
        self.hit = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def data_hash(subjects, reference=None) -> str:
    """A fingerprint of the training data: a run resumes only on the data it started with."""
    h = hashlib.sha256()
    arrays = [a for s in subjects for a in (s.features, s.betas, s.unique_idx)]
    arrays += [np.asarray(a) for pair in (reference or ()) for a in pair]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a)
    return h.hexdigest()


def check_recipe(run_dir: Path, saved: dict, given: Optional[dict], saved_data: str, data: str) -> None:
    """Refuse to continue a run with another recipe (``given``, a ``TrainConfig`` as a dict, against
    the run's ``saved`` one; None: the run's own) or on other training data (:func:`data_hash`)."""
    plain = lambda d: json.loads(json.dumps(d))  # noqa: E731  (tuples -> lists, as saved)
    diffs = [] if given is None else differences(plain(saved), plain(given))
    if diffs:
        raise RunDirError(f"{run_dir} holds a run with another recipe (run -> given: {'; '.join(diffs[:5])}"
                          f"{'; ...' if len(diffs) > 5 else ''}): {_FIX}")
    if saved_data != data:
        raise RunDirError(f"{run_dir} holds a run trained on other data (subjects, images, responses or "
                          f"reference encoders): {_FIX}")


def differences(old, new, where: str = "") -> List[str]:
    """Where two JSON-like values differ, as ``"where: old -> new"``.

    >>> differences({"seed": 0, "stages": [{"lr": 1}]}, {"seed": 7, "stages": [{"lr": 1}]})
    ['seed: 0 -> 7']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in dict.fromkeys([*old, *new])
                for d in differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def start_over(run_dir: Path) -> None:
    """``resume=False``: delete the previous run (its checkpoint first: that is the commit point)."""
    for name in (CHECKPOINT, CHECKPOINT + ".tmp", *LEGACY, "model.safetensors", "model.json", LOG):
        (run_dir / name).unlink(missing_ok=True)


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc only).

    A new K every step makes tensors of ever new sizes, and glibc keeps the freed blocks: a
    2,000-step CPU run grew by 0.2 GB a minute without this (called after every checkpoint).
    """
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl without it)
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
