"""Meta-training of the in-context encoder in three stages, as published.

1. **pretrain** — synthetic voxels: weights drawn from one Gaussian fitted to the training
   subjects' voxel weights, Gaussian noise, a fixed support size.
2. **extend** — the same synthetic voxels with a support size drawn per batch, ``K ~ U(k_min, k_max)``.
3. **finetune** — the training subjects' own voxels (one or more subjects held out).

Every step draws one set of K support images and B voxels that all see them (one subject's
voxels do see the same images), so one forward pass trains B tasks.

Supervision
-----------
``supervision="measured"`` (the default, and the recipe of every shipped model) uses only what an
experimenter measures: the synthetic prior of stages 1-2 is a Gaussian fitted to *fully trained*
ridge encoders of the training subjects (fitted to their measured responses), the synthetic noise
comes from the measured noise ceilings, and stage 3 is trained with the query loss on held-out
images of the same voxels, disjoint from the support. The training subjects' ground truth is
stripped before anything else happens, so no code path can read it. Synthetic voxels may use
their own known weights (we generate them, so an experimenter has them too).
``supervision="truth"`` is the privileged recipe of earlier versions (prior and noise from the
simulation's true weights and noise, population loss against the true weights in stage 3). It
exists only as a labelled ablation: it shows how much the privileged signal is worth.

Loss
----
``loss="query"`` is the published one: the mean squared error on held-out query images of the
same voxels. With ground truth (synthetic voxels always; SimNSD subjects; on NSD the fully
trained encoders play that role) ``loss="population"`` compares the predicted and the true
encoders through the image distribution: ``(theta_hat - theta)^T M (theta_hat - theta)`` with
``M = E[phi phi^T]``, ``phi = [x, 1]``, which is the query error on infinitely many noise-free
query images. Its minimiser is the Bayes posterior mean, the oracle of
:func:`braincorl_lite.baselines.bayes_oracle`. Both are divided by each voxel's response
variance, so every voxel counts the same (like EV). ``loss`` applies to the synthetic stages (and to
stage 3 under ``supervision="truth"``); under ``supervision="measured"`` stage 3 always uses the
query loss, because measured voxels have no known weights.

Run folder
----------
Runs are resumable and a kill at any moment leaves a folder that resumes bit for bit:

* ``checkpoint.pt`` — the resume state, in *one* file: weights, AdamW state, random states, stage
  and step. It is written to ``checkpoint.pt.tmp`` and renamed over the old one (``os.replace`` is
  atomic), so it always holds one complete checkpoint: this rename is the run's commit point.
  Written every ``checkpoint_every`` steps, at the end of each stage and on Ctrl-C.
* ``model.safetensors`` (+ ``model.json``) — the model for users (:func:`~braincorl_lite.model.load_checkpoint`),
  written just before each commit; once the run has finished, it is the final model.
* ``log.jsonl`` — one JSON line per step; on resume it is cut back to the steps the checkpoint holds.
* ``train.lock`` — locked (``flock``) while a run writes the folder: a second run into it is refused.

Rerunning into a folder continues its run only with the same recipe (:class:`TrainConfig`) and
the same training data; anything else is refused: pass a new folder, or ``resume=False`` to start over.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .data import SubjectData
from .errors import ConfigError, NonFiniteError, RunDirError
from .model import BraInCoRL, ModelConfig, load_checkpoint, pca_feature_transform, save_checkpoint

__all__ = ["SUPERVISIONS", "StageConfig", "TrainConfig", "strip_truth", "measured_prior", "GaussianVoxels",
           "SubjectVoxels", "train", "default_stages", "population_loss", "query_loss", "fit_gaussian", "read_log",
           "count_parameters",
           "stage_summary"]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """One training stage.

    Attributes
    ----------
    name : {"pretrain", "extend", "finetune"}
    steps : int
    k_min, k_max : int
        Support size range: every step draws ``K ~ U(k_min, k_max)`` (set both equal for a fixed K).
    lr, lr_min : float
        Peak learning rate (after a short warm-up) and the floor of its cosine decay.
    batch_voxels : int
        Voxels (tasks) per step, all seeing the same support images.
    n_query : int
        Query images per step (``loss="query"`` only).
    """

    name: str
    steps: int
    k_min: int = 30
    k_max: int = 300
    lr: float = 1e-3
    lr_min: float = 1e-5
    batch_voxels: int = 64
    n_query: int = 200

    def __post_init__(self):
        if self.name not in ("pretrain", "extend", "finetune"):
            raise ConfigError(f"unknown stage {self.name!r}: use pretrain, extend or finetune")
        if not 1 <= self.k_min <= self.k_max:
            raise ConfigError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        if not self.steps >= 1 or not self.batch_voxels >= 1:
            raise ConfigError(f"stage {self.name!r} needs steps >= 1 and batch_voxels >= 1, "
                              f"got {self.steps} and {self.batch_voxels}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.lr_min) and self.lr_min >= 0):
            raise ConfigError(f"stage {self.name!r} needs a finite lr > 0 and lr_min >= 0, got {self.lr}, {self.lr_min}")


def default_stages(scale: float = 1.0, k_max: int = 500, k_min: int = 5) -> List[StageConfig]:
    """The three stages with step counts multiplied by ``scale``.

    Support sizes follow the official scripts: stage 1 draws ``K ~ U(30, k_max)``; stages 2 and 3
    draw ``K ~ U(k_min, k_max)``. The official stage-2 range starts at 30; ``k_min=5`` (the
    default) also trains the very small supports that the book evaluates (K = 10): see the
    model card for the measured difference.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"the step scale must be a positive number, got {scale}")
    n = lambda s: max(1, int(round(s * scale)))  # noqa: E731
    return [StageConfig("pretrain", n(1500), k_min=min(30, k_max), k_max=k_max, lr=1e-3),
            StageConfig("extend", n(1500), k_min=k_min, k_max=k_max, lr=5e-4),
            StageConfig("finetune", n(1000), k_min=k_min, k_max=k_max, lr=2e-4)]


#: what a training run may learn from (see the module docstring)
SUPERVISIONS = ("measured", "truth")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint metadata)."""

    model: dict = field(default_factory=lambda: ModelConfig.lite().to_dict())
    stages: List[StageConfig] = field(default_factory=default_stages)
    supervision: str = "measured"
    loss: str = "population"
    n_components: Optional[int] = 128     # PCA basis inside the model (None: raw features)
    whiten: bool = True
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_fraction: float = 0.03
    seed: int = 0
    checkpoint_every: int = 200

    def __post_init__(self):
        self.stages = [s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages]
        if self.loss not in ("population", "query"):
            raise ConfigError("loss must be 'population' or 'query'")
        if self.supervision not in SUPERVISIONS:
            raise ConfigError(f"supervision must be one of {SUPERVISIONS}, got {self.supervision!r}")
        if not self.stages:
            raise ConfigError("a training run needs at least one stage")
        for st in self.stages:
            if self.stage_loss(st) == "query" and not st.n_query >= 1:
                raise ConfigError(f"stage {st.name!r} uses the query loss: it needs n_query >= 1, got {st.n_query}")
        if not self.checkpoint_every >= 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0 and self.weight_decay >= 0
                and 0 <= self.warmup_fraction < 1):
            raise ConfigError("need grad_clip > 0, weight_decay >= 0 and 0 <= warmup_fraction < 1, got "
                              f"{self.grad_clip}, {self.weight_decay}, {self.warmup_fraction}")

    def stage_loss(self, stage: StageConfig) -> str:
        """The loss of ``stage``: measured voxels (stage 3 under "measured") only have the query loss."""
        if stage.name == "finetune" and self.supervision == "measured":
            return "query"
        return self.loss

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d


# --------------------------------------------------------------------------------------------
# Task sources
# --------------------------------------------------------------------------------------------
def fit_gaussian(theta: np.ndarray, shrink: float = 1e-3):
    """Mean and covariance of voxel parameters ``theta`` (n_voxels, E + 1), lightly shrunk."""
    theta = np.asarray(theta, np.float64)
    mean = theta.mean(0)
    cov = np.cov(theta, rowvar=False)
    cov += shrink * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return mean, cov


def strip_truth(subjects: Sequence[SubjectData]) -> List[SubjectData]:
    """Copies of ``subjects`` without their ground truth: what an experimenter has."""
    from dataclasses import replace

    return [replace(s, truth=None) for s in subjects]


def measured_prior(subjects: Sequence[SubjectData], encoders=None):
    """The synthetic stages' prior from measured data only.

    Parameters
    ----------
    subjects : sequence of SubjectData
        Training subjects (their ``truth`` is never read).
    encoders : list of (W, b), optional
        Fully trained encoders of ``subjects`` (one per subject); fitted here with
        :func:`~braincorl_lite.baselines.fully_trained` (ridge on all unique images) when omitted.

    Returns
    -------
    mean, cov : ndarray
        Gaussian over ``[w, b]`` fitted to the fully trained encoders (:func:`fit_gaussian`).
    noise_var : ndarray
        Per-voxel noise variance of the averaged betas from the measured noise ceilings,
        ``Var(beta) * (1 - noise_ceiling)``.
    """
    from .baselines import fully_trained

    if encoders is None:
        encoders = [fully_trained(s) for s in subjects]
    if len(encoders) != len(subjects):
        raise ConfigError(f"need one (W, b) per training subject: got {len(encoders)} for {len(subjects)}")
    theta = np.vstack([np.hstack([W, np.asarray(b)[:, None]]) for W, b in encoders])
    mean, cov = fit_gaussian(theta)
    noise_var = np.concatenate([s.betas[s.unique_idx].var(0).astype(np.float64) * (1 - s.noise_ceiling)
                                for s in subjects])
    return mean, cov, noise_var


def _truth_prior(subjects: Sequence[SubjectData]):
    """The privileged prior (ablation only): the true weights and true noise of the subjects."""
    if any(s.truth is None for s in subjects):
        raise ConfigError("supervision='truth' needs simulated subjects with ground truth; "
                         "real data can only be trained with supervision='measured'")
    theta = np.vstack([np.hstack([s.truth.weights, s.truth.bias[:, None]]) for s in subjects])
    mean, cov = fit_gaussian(theta)
    noise_var = np.concatenate([s.truth.effective_noise_var(s.n_repeats) for s in subjects])
    return mean, cov, noise_var


class _Batch:
    """One training step's tasks (tensors on the training device)."""

    def __init__(self, support_x, support_y, theta=None, norm=None, query_x=None, query_y=None):
        self.support_x, self.support_y = support_x, support_y
        self.theta, self.norm = theta, norm
        self.query_x, self.query_y = query_x, query_y

    def shard(self, rank: int, world: int) -> "_Batch":
        """This rank's share of the voxels (every rank drew the same episode)."""
        sl = slice(rank, None, world)
        pick = lambda t: None if t is None else t[sl]  # noqa: E731
        return _Batch(self.support_x, self.support_y[sl], pick(self.theta), pick(self.norm),
                      self.query_x, pick(self.query_y))


class GaussianVoxels:
    """Synthetic voxels: ``theta ~ N(mean, cov)``, responses ``[x, 1] . theta + N(0, noise_var)``.

    Parameters
    ----------
    features : ndarray (n_images, E)
        The image pool support and query images are drawn from.
    mean, cov : ndarray (E + 1,), (E + 1, E + 1)
        Gaussian over voxel parameters (see :func:`fit_gaussian`).
    noise_var : ndarray
        Noise variances to draw from (e.g. the training voxels' ones).
    """

    def __init__(self, features, mean, cov, noise_var, device="cpu", seed=0):
        self.device = torch.device(device)
        self.x = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=self.device)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)
        chol = np.linalg.cholesky(np.asarray(cov, np.float64))
        self.chol = torch.as_tensor(chol, dtype=torch.float32, device=self.device)
        self.noise_var = torch.as_tensor(np.asarray(noise_var), dtype=torch.float32, device=self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        phi = torch.cat([self.x, torch.ones(len(self.x), 1, device=self.device)], 1)
        self.M = phi.T @ phi / len(phi)
        self.cov_x = torch.cov(self.x.T)

    def sample(self, batch: int, k: int, n_query: int = 0) -> _Batch:
        g, dev = self.gen, self.device
        idx = torch.randperm(len(self.x), generator=g, device=dev)[: k + n_query]
        xs = self.x[idx[:k]]
        theta = self.mean + torch.randn(batch, self.chol.shape[0], generator=g, device=dev) @ self.chol.T
        nv = self.noise_var[torch.randint(len(self.noise_var), (batch,), generator=g, device=dev)]
        w, b = theta[:, :-1], theta[:, -1]
        y = xs @ w.T + b
        y = y.T + torch.randn(batch, k, generator=g, device=dev) * nv.sqrt()[:, None]
        norm = torch.einsum("bi,ij,bj->b", w, self.cov_x, w) + nv
        qx = qy = None
        if n_query:
            qx = self.x[idx[k:]]
            qy = (qx @ w.T + b).T + torch.randn(batch, n_query, generator=g, device=dev) * nv.sqrt()[:, None]
        return _Batch(xs, y, theta, norm, qx, qy)


class SubjectVoxels:
    """The training subjects' own voxels.

    Support images come from a subject's unique images; query images (``loss="query"``) from its
    other unique images, disjoint from the support. ``theta`` (the target of the population loss)
    is the ground truth when ``use_truth`` and the subjects carry it; measured voxels have none.
    """

    def __init__(self, subjects: Sequence[SubjectData], device="cpu", seed=0, use_truth: bool = False):
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.subjects = []
        for s in subjects:
            uniq = s.unique_idx
            entry = {"x": torch.as_tensor(s.features[uniq], device=self.device),
                     "y": torch.as_tensor(s.betas[uniq], device=self.device)}
            if use_truth and s.truth is not None:
                theta = np.hstack([s.truth.weights, s.truth.bias[:, None]])
                entry["theta"] = torch.as_tensor(theta, dtype=torch.float32, device=self.device)
            entry["var"] = entry["y"].var(0)
            self.subjects.append(entry)
        x_all = torch.cat([e["x"] for e in self.subjects])
        phi = torch.cat([x_all, torch.ones(len(x_all), 1, device=self.device)], 1)
        self.M = phi.T @ phi / len(phi)

    @property
    def pool_size(self) -> int:
        """The smallest number of unique images of any subject (support + query must fit)."""
        return min(len(e["x"]) for e in self.subjects)

    def sample(self, batch: int, k: int, n_query: int = 0) -> _Batch:
        g, dev = self.gen, self.device
        e = self.subjects[int(torch.randint(len(self.subjects), (1,), generator=g, device=dev))]
        n_img, n_vox = e["y"].shape
        idx = torch.randperm(n_img, generator=g, device=dev)[: k + n_query]
        vox = torch.randperm(n_vox, generator=g, device=dev)[:batch]
        xs = e["x"][idx[:k]]
        y = e["y"][idx[:k]][:, vox].T
        theta = e["theta"][vox] if "theta" in e else None
        qx = qy = None
        if n_query:
            qx = e["x"][idx[k:]]
            qy = e["y"][idx[k:]][:, vox].T
        return _Batch(xs, y, theta, e["var"][vox], qx, qy)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
def population_loss(hw: torch.Tensor, theta: torch.Tensor, M: torch.Tensor, norm: torch.Tensor):
    """Mean over voxels of ``(hw - theta)^T M (hw - theta) / norm``."""
    d = hw - theta
    return (torch.einsum("bi,ij,bj->b", d, M, d) / norm.clamp_min(1e-6)).mean()


def query_loss(hw: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor, norm: torch.Tensor):
    """Mean over voxels of the query-set MSE divided by ``norm``."""
    pred = BraInCoRL.predict(hw, query_x)
    return (((pred - query_y) ** 2).mean(1) / norm.clamp_min(1e-6)).mean()


# --------------------------------------------------------------------------------------------
# Processes and learning rate
# --------------------------------------------------------------------------------------------
def _distributed():
    """``(rank, world_size, local_rank)``; joins the process group when started by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _lr_at(step: int, stage: StageConfig, warmup: int) -> float:
    if step < warmup:
        return stage.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, stage.steps - warmup)
    return stage.lr_min + 0.5 * (stage.lr - stage.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


# --------------------------------------------------------------------------------------------
# The run folder: one checkpoint file, committed by an atomic rename
# --------------------------------------------------------------------------------------------
CHECKPOINT, LOCK, LOG = "checkpoint.pt", "train.lock", "log.jsonl"
_STATE_FORMAT = "braincorl-lite-train-state/1"
_LEGACY = ("state.json", "optimizer.safetensors")  # the resume state before checkpoint.pt


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc only; elsewhere nothing happens).

    A new K every step makes tensors of ever new sizes; on a CPU, glibc's allocator keeps the
    freed blocks: a 2,000-step CPU run grew by about 0.2 GB a minute, and calling this by hand on
    it brought 6 GB back to 2 GB. It runs after every checkpoint.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl without it)
        pass


def _commit(run_dir: Path, state: dict) -> None:
    """Write ``state`` as ``run_dir/checkpoint.pt``: all of it or, after a kill, none of it.

    The file is written under a temporary name and flushed to the disk; ``os.replace`` then puts
    it in place of the previous checkpoint in one atomic step.
    """
    path = run_dir / CHECKPOINT
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable (POSIX; folders cannot be opened on Windows)
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def _read_state(run_dir: Path) -> Optional[dict]:
    """The committed state of the run in ``run_dir`` (written by :func:`_commit`), None if there is none."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return _read_legacy(run_dir) if (run_dir / "state.json").exists() else None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or overwritten: torch raises many types
        raise RunDirError(f"{path} is damaged and cannot be resumed ({_first_line(err)}): "
                          f"use a new folder, or resume=False to start the run over") from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise RunDirError(f"{path} is not a braincorl-lite training checkpoint: use a new folder or resume=False")
    return state


def _read_legacy(run_dir: Path) -> dict:
    """A run in the layout before ``checkpoint.pt`` (model.safetensors, optimizer.safetensors and
    state.json, written one after another), as the state of :func:`_read_state`. A kill between
    those writes leaves them out of step: such a run is refused."""
    from safetensors.torch import load_file

    try:
        old = json.loads((run_dir / "state.json").read_text())
        model, meta = load_checkpoint(run_dir / "model.safetensors")
        tensors = load_file(str(run_dir / "optimizer.safetensors"))
    except Exception as err:
        raise RunDirError(f"{run_dir} holds a run in the old layout (state.json) that cannot be read "
                          f"({_first_line(err)}): use a new folder, or resume=False to start it over") from None
    if (meta.get("stage"), meta.get("step")) != (old.get("stage"), old.get("step")):
        raise RunDirError(f"{run_dir} holds a run in the old layout whose model (stage {meta.get('stage')}, step "
                          f"{meta.get('step')}) and state.json (stage {old.get('stage')}, step {old.get('step')}) "
                          f"disagree: it was stopped between two writes; use a new folder or resume=False")
    adam = {name: {"exp_avg": tensors[f"{name}::exp_avg"], "exp_avg_sq": tensors[f"{name}::exp_avg_sq"],
                   "step": torch.tensor(float(tensors[f"{name}::step"][0]))}
            for name, _ in model.named_parameters() if f"{name}::exp_avg" in tensors}
    rng = {key[len("rng::"):]: t for key, t in tensors.items() if key.startswith("rng::")}
    if "numpy_rng" in old:
        rng["numpy"] = old["numpy_rng"]
    return {"format": _STATE_FORMAT, "stage": old["stage"], "step": old["step"], "legacy": True,
            "train_config": meta["train_config"], "data": None, "model_config": model.config.to_dict(),
            "model": model.state_dict(), "adam_by_name": adam, "rng": rng,
            "train_seconds": old.get("train_seconds", 0.0)}


def _restore(state: dict, model, optimizer, generators: dict, rng, config: TrainConfig, run_dir: Path) -> None:
    """Load a committed state into the run's model, optimiser and random generators; check that
    the model, the optimiser and the step agree."""
    try:
        model.load_state_dict(state["model"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:  # old layout: AdamW state by parameter name
            for name, p in model.named_parameters():
                if name in state["adam_by_name"]:
                    optimizer.state[p] = {k: v.to(p.device) if k != "step" else v
                                          for k, v in state["adam_by_name"][name].items()}
    except (RuntimeError, ValueError, KeyError) as err:
        raise RunDirError(f"the checkpoint in {run_dir} does not fit its own recipe ({_first_line(err)}): "
                          f"use a new folder or resume=False") from None
    stage, step = state["stage"], state["step"]
    adam_steps = max((int(s["step"]) for s in optimizer.state.values()), default=0)
    if not (0 <= stage < len(config.stages) and 0 <= step < config.stages[stage].steps) \
            or adam_steps != _steps_before(config, stage, step):
        raise RunDirError(f"the checkpoint in {run_dir} is inconsistent (stage {stage + 1} step {step}, but the "
                          f"optimiser has taken {adam_steps} steps): use a new folder or resume=False")
    for key, gen in generators.items():
        if key in state["rng"]:
            gen.set_state(state["rng"][key])
    if "torch" in state["rng"]:
        torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    if "numpy" in state["rng"]:
        rng.bit_generator.state = state["rng"]["numpy"]


def _steps_before(config: TrainConfig, stage: int, step: int) -> int:
    """Training steps done before ``step`` of ``stage``: the number of log lines at that point."""
    return sum(s.steps for s in config.stages[:stage]) + step


def _cut_log(path: Path, n: int, dedupe: bool = False) -> None:
    """Keep the first ``n`` lines of the log (creating it if missing): the steps that the checkpoint holds.

    Later lines were logged after the checkpoint by a run that then died; the resumed run trains
    and logs those steps again. ``dedupe`` first repairs old-layout logs, where each resume
    appended such steps a second time: a step logged again rewinds the log to its first entry.
    """
    if dedupe and path.exists():
        rows, where = [], {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                key = (row["stage"], row["step"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by the kill
            if key in where:  # a resume went back to this step: drop what followed it
                cut = where[key]
                for old_key, _ in rows[cut:]:
                    del where[old_key]
                rows = rows[:cut]
            where[key] = len(rows)
            rows.append((key, line))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for _, line in rows))
        os.replace(tmp, path)
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


class _Lock:
    """``run_dir/train.lock``, locked (``flock``) while a run writes the folder.

    The operating system drops the lock when its process ends, however it ends: a lock file left
    behind by a dead run holds no lock and is simply taken over. The file names the holder's PID.
    (Windows has no ``flock``: there the folder is not locked.)
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


class _CtrlC:
    """Defers Ctrl-C (SIGINT) to the end of the current step, where the run can be saved whole.

    A half-done step cannot be saved (its random draws are made, its update is not). A second
    Ctrl-C stops at once, without saving. Only in the main thread of a single process: ranks of a
    distributed run would stop at different steps.
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


def _data_hash(subjects: Sequence[SubjectData], reference=None) -> str:
    """A fingerprint of the training data: a run resumes only on the data it started with."""
    h = hashlib.sha256()
    arrays = [a for s in subjects for a in (s.features, s.betas, s.unique_idx)]
    arrays += [np.asarray(a) for pair in (reference or ()) for a in pair]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a)
    return h.hexdigest()


def _plain(config: TrainConfig) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def _differences(old, new, where: str = "") -> List[str]:
    """Where two JSON-like values differ, as ``"where: old -> new"``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in dict.fromkeys([*old, *new])
                for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def _start_over(run_dir: Path) -> None:
    """``resume=False``: delete the previous run (its checkpoint first: that is the commit point)."""
    for name in (CHECKPOINT, CHECKPOINT + ".tmp", *_LEGACY, "model.safetensors", "model.json", LOG):
        (run_dir / name).unlink(missing_ok=True)


def _ranks_param_diff(model) -> float:
    """The largest difference between any rank's parameters and rank 0's (should be 0)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------
def train(train_subjects: Sequence[SubjectData], run_dir, config: Optional[TrainConfig] = None,
          device: Optional[str] = None, resume: bool = True, progress: bool = True,
          reference=None, extra_metadata: Optional[dict] = None,
          stop_after_steps: Optional[int] = None) -> BraInCoRL:
    """Meta-train a model on ``train_subjects`` and save it in ``run_dir``.

    Parameters
    ----------
    train_subjects : sequence of SubjectData
        Subjects whose voxels define the prior (stage 1-2) and the finetuning tasks (stage 3).
        Held-out subjects must not be among them.
    run_dir : path
        Output folder (see "Run folder" in the module docstring).
    config : TrainConfig, optional
        The recipe (default ``TrainConfig()``). A run already in ``run_dir`` continues only with
        its own recipe: omit ``config`` to use it, or pass the same one.
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    resume : bool
        Continue the unfinished run in ``run_dir`` (default). ``False`` deletes it and starts over.
    reference : list of (W, b), optional
        Fully trained encoders of ``train_subjects`` for the synthetic prior under
        ``supervision="measured"`` (fitted here when omitted). They are never a training target.
    stop_after_steps : int, optional
        Save and return after this many steps of this call (a run to be resumed later).

    Returns
    -------
    BraInCoRL
        The trained model (in eval mode); also saved as ``run_dir/model.safetensors``.

    Raises
    ------
    ConfigError
        A setting that cannot work (checked before any training).
    RunDirError
        ``run_dir`` is in use by another run, holds a run with another recipe or other training
        data, or holds a damaged checkpoint.
    NonFiniteError
        The loss or the gradient became NaN or infinite: training stops, nothing of that step is saved.
    KeyboardInterrupt
        Ctrl-C. The run is first saved at the end of the current step (the message says where);
        a second Ctrl-C stops at once, without saving.

    Notes
    -----
    Under ``torchrun --nproc_per_node=N`` the run is data-parallel (DistributedDataParallel; gloo
    on CPU, nccl on GPU): every rank draws the same episode and trains on its share of the
    ``batch_voxels`` voxels, gradients are averaged, so each step equals one single-process step
    on the whole batch. Rank 0 writes the log and the checkpoints.
    """
    rank, world, local_rank = _distributed()
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _Lock(run_dir) if rank == 0 else None  # before anything in the folder is read
    try:
        return _train(train_subjects, run_dir, config, torch.device(device), resume, progress, reference,
                      dict(extra_metadata or {}), stop_after_steps, rank, world)
    finally:
        if lock is not None:
            lock.release()


def _train(train_subjects, run_dir: Path, config, device, resume, progress, reference, extra,
           stop_after_steps, rank, world) -> BraInCoRL:
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    main = rank == 0
    progress = progress and main

    # ---- the run already in run_dir continues only with its own recipe and data
    data = _data_hash(train_subjects, reference)
    state = _read_state(run_dir) if resume else None
    if state is not None:
        saved = TrainConfig(**state["train_config"])
        diffs = [] if config is None else _differences(_plain(saved), _plain(config))
        if diffs:
            raise RunDirError(f"{run_dir} holds a run with another recipe (run -> given: {'; '.join(diffs[:5])}"
                              f"{'; ...' if len(diffs) > 5 else ''}): use a new folder, or resume=False to start it over")
        if state["data"] not in (None, data):
            raise RunDirError(f"{run_dir} holds a run trained on other data (subjects, images, responses or "
                              f"reference encoders): use a new folder, or resume=False to start it over")
        config = saved
    config = config or TrainConfig()
    if world > 1 and any(st.batch_voxels % world for st in config.stages):
        raise ConfigError(f"batch_voxels must be divisible by the number of processes ({world})")
    feats = np.vstack([s.features[s.unique_idx] for s in train_subjects])
    for st in config.stages:
        pool = min(len(s.unique_idx) for s in train_subjects) if st.name == "finetune" else len(feats)
        needed = st.k_max + (st.n_query if config.stage_loss(st) == "query" else 0)
        if needed > pool:
            raise ConfigError(f"stage {st.name!r} needs k_max + n_query = {needed} images, but its image pool "
                              f"has {pool} (unique images per training subject): lower k_max or n_query")
    if not resume and main:
        _start_over(run_dir)
    if state is not None and state["stage"] >= len(config.stages):
        if main:
            print(f"{run_dir} holds a finished run: nothing to train (use a new folder, or resume=False to train again)")
        model = BraInCoRL(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        return model.to(device).eval()
    torch.manual_seed(config.seed)
    if device.type == "cuda":  # TF32 matmuls: ample precision for training, much faster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- what the run may learn from: measured responses only, unless this is the truth ablation
    if config.supervision == "measured":
        train_subjects = strip_truth(train_subjects)
        mean, cov, noise_var = measured_prior(train_subjects, encoders=reference)
    else:
        mean, cov, noise_var = _truth_prior(train_subjects)
    subj_tasks = SubjectVoxels(train_subjects, device=device, seed=config.seed + 1,
                               use_truth=config.supervision == "truth")
    synth = GaussianVoxels(feats, mean, cov, noise_var, device=device, seed=config.seed + 2)

    # ---- model (resumed, or new with a PCA basis of the training images) and optimiser
    if state is not None:
        model = BraInCoRL(ModelConfig.from_dict(state["model_config"])).to(device)
    else:
        mcfg = ModelConfig.from_dict({**config.model, "n_components": config.n_components})
        model = BraInCoRL(mcfg).to(device)
        if config.n_components is not None:
            m, proj = pca_feature_transform(feats, config.n_components, whiten=config.whiten)
            model.set_feature_transform(m, proj)
    model.train()
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        extra["distributed"] = {"world_size": world, "backend": torch.distributed.get_backend()}
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    generators = {"synthetic": synth.gen, "subjects": subj_tasks.gen}
    rng = np.random.default_rng(config.seed + 3)  # draws the support size of each step
    start_stage, start_step, elapsed0 = 0, 0, 0.0
    if state is not None:
        _restore(state, model, optimizer, generators, rng, config, run_dir)
        start_stage, start_step, elapsed0 = state["stage"], state["step"], state["train_seconds"]
        if main:
            print(f"resuming {run_dir} at stage {start_stage + 1} step {start_step}")
    if main:
        _cut_log(run_dir / LOG, _steps_before(config, start_stage, start_step), dedupe=bool(state and state.get("legacy")))

    saved_at = None

    def save(stage_idx, step):
        """Export ``model.safetensors``, then commit ``checkpoint.pt`` (rank 0; the others wait)."""
        nonlocal saved_at
        if main:
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise NonFiniteError(f"non-finite weights at stage {stage_idx + 1} step {step}: not saved "
                                     f"({run_dir} keeps its last checkpoint); try a lower learning rate")
            log.flush()  # every logged step reaches the disk before the checkpoint that holds it
            os.fsync(log.fileno())
            seconds = elapsed0 + time.perf_counter() - t0
            meta = {"train_config": config.to_dict(), "stage": stage_idx, "step": step, **extra,
                    "train_seconds": seconds}
            save_checkpoint(model, run_dir / "model.safetensors", metadata=meta)
            rngs = {**{k: g.get_state() for k, g in generators.items()}, "torch": torch.get_rng_state(),
                    "numpy": rng.bit_generator.state}
            if device.type == "cuda":
                rngs["cuda"] = torch.cuda.get_rng_state(device)
            _commit(run_dir, {"format": _STATE_FORMAT, "stage": stage_idx, "step": step,
                              "train_config": config.to_dict(), "data": data, "train_seconds": seconds,
                              "model_config": model.config.to_dict(), "model": model.state_dict(),
                              "optimizer": optimizer.state_dict(), "rng": rngs})
            for name in _LEGACY:  # an old-layout run is now in the new layout
                (run_dir / name).unlink(missing_ok=True)
        if world > 1:
            torch.distributed.barrier()
        saved_at = (stage_idx, step)
        _release_freed_memory()

    t0 = time.perf_counter()
    done, halt, n_stages = 0, False, len(config.stages)
    with open(run_dir / LOG, "a") if main else nullcontext() as log, _CtrlC(run_dir, world == 1) as ctrl_c:
        for si in range(start_stage, n_stages):
            stage = config.stages[si]
            source = synth if stage.name in ("pretrain", "extend") else subj_tasks
            warmup = max(1, int(config.warmup_fraction * stage.steps))
            first = start_step if si == start_stage else 0
            bar = tqdm(range(first, stage.steps), desc=f"stage {si + 1}/{n_stages} {stage.name}",
                       disable=not progress, initial=first, total=stage.steps)
            running = None
            for step in bar:
                k = int(rng.integers(stage.k_min, stage.k_max + 1))
                loss_name = config.stage_loss(stage)
                nq = stage.n_query if loss_name == "query" else 0
                batch = source.sample(stage.batch_voxels, k, nq)
                if world > 1:
                    batch = batch.shard(rank, world)
                lr = _lr_at(step, stage, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                hw = net(batch.support_x, batch.support_y)
                if loss_name == "population":
                    loss = population_loss(hw, batch.theta, source.M, batch.norm)
                else:
                    loss = query_loss(hw, batch.query_x, batch.query_y, batch.norm)
                value = loss.detach()
                if world > 1:  # the mean over ranks is the loss of the whole batch
                    torch.distributed.all_reduce(value)
                    value = value / world
                value = float(value)
                where = f"stage {si + 1} ({stage.name}) step {step}"
                if not math.isfinite(value):
                    raise NonFiniteError(f"the loss is {value} at {where}: training stopped, nothing of this step "
                                         f"was saved ({run_dir} keeps its last checkpoint); try a lower learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                if not math.isfinite(gnorm):
                    raise NonFiniteError(f"the gradient norm is {gnorm} at {where}: training stopped, nothing of "
                                         f"this step was saved ({run_dir} keeps its last checkpoint)")
                optimizer.step()
                running = value if running is None else 0.98 * running + 0.02 * value
                bar.set_postfix(loss=f"{running:.4f}", k=k)
                if main:
                    log.write(json.dumps({"stage": stage.name, "step": step, "k": k, "loss": value, "lr": lr,
                                          "grad_norm": gnorm, "seconds": elapsed0 + time.perf_counter() - t0},
                                         allow_nan=False) + "\n")
                done += 1
                halt = ctrl_c.hit or (stop_after_steps is not None and done >= stop_after_steps)
                if step + 1 == stage.steps:
                    if world > 1 and si + 1 == n_stages:
                        extra["distributed"]["max_param_diff_across_ranks"] = _ranks_param_diff(model)
                    save(si + 1, 0)
                elif halt or (step + 1) % config.checkpoint_every == 0:
                    save(si, step + 1)
                if halt:
                    break
            bar.close()
            if halt:
                break
    if ctrl_c.hit and saved_at[0] < n_stages:
        raise KeyboardInterrupt(f"interrupted: {run_dir} was saved at stage {saved_at[0] + 1} step {saved_at[1]}; "
                                f"run it again to resume")
    model.eval()
    return model


def measure_step_time(train_subjects, config: TrainConfig, device=None, n_steps: int = 15) -> float:
    """Seconds per training step of ``config`` on ``device`` (median of a few warm steps)."""
    import tempfile

    cfg = TrainConfig(**{**config.to_dict(), "stages": [
        {**asdict(config.stages[1]), "steps": n_steps, "k_min": config.stages[1].k_max // 2,
         "k_max": config.stages[1].k_max // 2}], "checkpoint_every": 10 ** 9})
    with tempfile.TemporaryDirectory() as tmp:
        train(train_subjects, tmp, cfg, device=device, resume=False, progress=False)
        log = [json.loads(line) for line in open(Path(tmp) / "log.jsonl")]
    t = np.diff([r["seconds"] for r in log])[3:]
    return float(np.median(t))


def read_log(run_dir):
    """The training log of a run as a pandas DataFrame (one row per step)."""
    import pandas as pd

    return pd.read_json(Path(run_dir) / "log.jsonl", lines=True)


def count_parameters(config) -> int:
    """Trainable parameters of a :class:`~braincorl_lite.model.BraInCoRL` with this configuration.

    The model is built on PyTorch's ``meta`` device, so no memory is allocated even for the
    published 97M-parameter configuration.

    Parameters
    ----------
    config : ModelConfig or dict

    Examples
    --------
    >>> count_parameters(ModelConfig.paper())
    97074852
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    with torch.device("meta"):
        model = BraInCoRL(config)
    return model.n_parameters()


def stage_summary(log, tail: float = 0.1):
    """One row per training stage of a log from :func:`read_log`.

    Parameters
    ----------
    log : pandas.DataFrame
        Columns ``stage, step, k, loss, seconds`` (one row per step).
    tail : float
        Fraction of the last steps of a stage averaged into ``final_loss`` (the per-step loss is
        noisy: every step draws new voxels and a new K).

    Returns
    -------
    pandas.DataFrame indexed by stage (in training order) with ``steps``, ``first_loss`` (mean
    of the first steps, same fraction), ``final_loss``, ``k_min``, ``k_max`` and ``seconds``.
    """
    import pandas as pd

    rows, prev_end = [], float(log.seconds.iloc[0]) if len(log) else 0.0
    for stage in dict.fromkeys(log.stage):
        part = log[log.stage == stage]
        n = max(1, int(round(tail * len(part))))
        end = float(part.seconds.iloc[-1])
        rows.append({"stage": stage, "steps": len(part), "first_loss": float(part.loss.iloc[:n].mean()),
                     "final_loss": float(part.loss.iloc[-n:].mean()), "k_min": int(part.k.min()),
                     "k_max": int(part.k.max()), "seconds": end - prev_end})
        prev_end = end
    return pd.DataFrame(rows).set_index("stage")
