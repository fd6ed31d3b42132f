"""Meta-training of the in-context encoder in three stages, as published.

1. **pretrain**: synthetic voxels, encoders drawn from a Gaussian fitted to the training subjects'
   voxels, Gaussian noise (:class:`~braincorl_lite.tasks.GaussianVoxels`).
2. **extend**: the same with a support size drawn per step, ``K ~ U(k_min, k_max)``.
3. **finetune**: the training subjects' own voxels (:class:`~braincorl_lite.tasks.SubjectVoxels`).

**Supervision.** ``"measured"`` (the default; every shipped model) uses only what an experimenter
measures: the stage 1-2 prior is fitted to *fully trained* ridge encoders, the synthetic noise comes
from the noise ceilings, and stage 3 uses the query loss on held-out images of the same voxels,
disjoint from the support. The ground truth is stripped first, so no code path can read it.
``"truth"`` (true weights and noise; population loss in stage 3) is a labelled ablation: what the
privileged signal is worth.

**Loss.** ``"query"`` (published) is the mean squared error on held-out query images.
``"population"`` is ``(theta_hat - theta)^T M (theta_hat - theta)`` with ``M = E[phi phi^T]``,
``phi = [x, 1]``: the query error on infinitely many noise-free images, minimised by the Bayes
posterior mean (:func:`~braincorl_lite.baselines.bayes_oracle`). Both are divided by each voxel's
response variance, so every voxel counts the same (like EV). Measured voxels have no known
weights: stage 3 under ``"measured"`` always uses the query loss.

Runs are resumable and crash-safe (:mod:`braincorl_lite.runs`), but only with the same recipe
(:class:`TrainConfig`) and training data: pass a new folder, or ``resume=False`` to start over.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from . import runs
from ._device import distributed, ranks_param_diff, resolve_device
from .data import SubjectData
from .errors import ConfigError, NonFiniteError
from .model import BraInCoRL, ModelConfig, pca_feature_transform
from .tasks import GaussianVoxels, SubjectVoxels, measured_prior, population_loss, query_loss, strip_truth, truth_prior

__all__ = ["SUPERVISIONS", "StageConfig", "TrainConfig", "default_stages", "check_image_pools", "train",
           "measure_step_time", "read_log", "stage_summary", "count_parameters"]


# ------------------------------------------------------------------------------------- recipe
@dataclass
class StageConfig:
    """One training stage.

    Attributes
    ----------
    name : str
        ``"pretrain"``, ``"extend"`` or ``"finetune"``.
    steps : int
    k_min : int
        Smallest support size: every step draws ``K ~ U(k_min, k_max)``.
    k_max : int
        Largest support size (equal to ``k_min``: a fixed K).
    lr : float
        Peak learning rate, after a short warm-up.
    lr_min : float
        Floor of its cosine decay.
    batch_voxels : int
        Voxels (tasks) per step, all seeing the same support images.
    n_query : int
        Query images per step (query loss only).
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
    """The three stages (1500, 1500 and 1000 steps) with step counts multiplied by ``scale``.

    Stage 1 draws ``K ~ U(30, k_max)`` as the official scripts do; stages 2 and 3 draw
    ``K ~ U(k_min, k_max)``. The official stage-2 range starts at 30; ``k_min=5`` also trains the
    small supports that the book evaluates (K = 10), see the model card.

    >>> [(s.name, s.steps, s.k_min) for s in default_stages(0.1)]
    [('pretrain', 150, 30), ('extend', 150, 5), ('finetune', 100, 5)]
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
    """Everything that defines a training run (saved in the checkpoint metadata).

    ``max_minutes`` stops the run after that much training time (summed over resumes): it is
    saved and :func:`train` returns the model as it is then (None: no limit).
    """

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
    max_minutes: Optional[float] = None

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
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be positive (or None: no limit), got {self.max_minutes}")

    def stage_loss(self, stage: StageConfig) -> str:
        """The loss of ``stage``: measured voxels (stage 3 under "measured") only have the query loss."""
        return "query" if stage.name == "finetune" and self.supervision == "measured" else self.loss

    def to_dict(self) -> dict:
        return {**asdict(self), "stages": [asdict(s) for s in self.stages]}


def check_image_pools(config: TrainConfig, n_unique: Sequence[int], k_max_name: str = "k_max") -> None:
    """Refuse a recipe whose support and query images do not fit the training images.

    Stages 1-2 draw from the unique images of all training subjects together (``n_unique``: one
    count per subject), stage 3 from one subject's. ``k_max_name`` names the setting in the message.
    """
    needs = [(st, st.n_query if config.stage_loss(st) == "query" else 0,
              min(n_unique) if st.name == "finetune" else sum(n_unique)) for st in config.stages]
    limit = min(pool - nq for _, nq, pool in needs)
    for st, nq, pool in needs:
        if st.k_max + nq > pool:
            where = "the smallest training subject" if st.name == "finetune" else "the training subjects together"
            why = " (stage 3 learns from measured responses with the query loss)" \
                if st.name == "finetune" and config.supervision == "measured" else ""
            fix = f"use {k_max_name} {limit} or less" if limit >= 1 else "the training subjects have too few images"
            raise ConfigError(f"stage {st.name!r} needs {k_max_name} {st.k_max}" + (f" + {nq} query images" if nq
                              else "") + f" = {st.k_max + nq} images but there are {pool} (unique images of "
                              f"{where}){why}: {fix}")


def _lr_at(step: int, stage: StageConfig, warmup: int) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``lr_min``."""
    if step < warmup:
        return stage.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, stage.steps - warmup)
    return stage.lr_min + 0.5 * (stage.lr - stage.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


# --------------------------------------------------------------------------------- the loop
def train(train_subjects: Sequence[SubjectData], run_dir, config: Optional[TrainConfig] = None,
          device: Optional[str] = None, resume: bool = True, progress: bool = True,
          reference=None, extra_metadata: Optional[dict] = None, stop_after_steps: Optional[int] = None,
          callback: Optional[Callable] = None, eval_every: int = 100) -> BraInCoRL:
    """Meta-train a model on ``train_subjects`` and save it in ``run_dir``.

    Parameters
    ----------
    train_subjects : sequence of SubjectData
        Subjects whose voxels define the prior (stages 1-2) and the finetuning tasks (stage 3); not
        the held-out ones.
    run_dir : path
        Output folder (see :mod:`braincorl_lite.runs`).
    config : TrainConfig, optional
        The recipe (default ``TrainConfig()``). A run already in ``run_dir`` continues only with
        its own recipe: omit ``config`` to use it, or pass the same one.
    device : str, optional
        ``"auto"`` (default): CUDA when available, else the CPU.
    resume : bool
        Continue the unfinished run in ``run_dir`` (default). ``False`` deletes it and starts over.
    reference : list of (W, b), optional
        Fully trained encoders of ``train_subjects`` for the synthetic prior under
        ``supervision="measured"`` (fitted here when omitted). They are never a training target.
    extra_metadata : dict, optional
        Added to the metadata of ``model.safetensors``.
    stop_after_steps : int, optional
        Save and return after this many steps of this call (a run to be resumed later).
    callback : callable, optional
        ``callback(step, model)`` every ``eval_every`` steps and after the last one, in eval mode,
        without gradients, random states kept (e.g. the EV on a held-out subject). A number it
        returns (logged as ``"eval"``) or a dict of numbers is added to that step's log line.

    Returns
    -------
    BraInCoRL
        The trained model (in eval mode); also saved as ``run_dir/model.safetensors``.

    Raises
    ------
    ConfigError
        A setting that cannot work (checked before any training).
    RunDirError
        ``run_dir`` is in use, or holds a run with another recipe or data, or a damaged checkpoint.
    NonFiniteError
        The loss or the gradient became NaN or infinite: training stops, nothing of that step is saved.
    KeyboardInterrupt
        Ctrl-C. The run is first saved at the end of the current step (the message says where);
        a second Ctrl-C stops at once, without saving.

    Notes
    -----
    Under ``torchrun --nproc_per_node=N`` the run is data-parallel (DDP; gloo on CPU, nccl on GPU):
    every rank draws the same episode and trains on its share of the voxels; averaged gradients
    make each step one single-process step on the whole batch. Rank 0 writes and calls ``callback``.
    """
    rank, world, local_rank = distributed()
    device = torch.device(resolve_device(device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if not eval_every >= 1:
        raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = runs.Lock(run_dir) if rank == 0 else None  # before anything in the folder is read
    try:
        return _train(train_subjects, run_dir, config, device, resume, progress, reference,
                      dict(extra_metadata or {}), stop_after_steps, callback, eval_every, rank, world)
    finally:
        if lock is not None:
            lock.release()


def _train(train_subjects, run_dir: Path, config, device, resume, progress, reference, extra,
           stop_after_steps, callback, eval_every, rank, world) -> BraInCoRL:
    from tqdm.auto import tqdm

    main = rank == 0
    say = print if main else (lambda *args: None)  # rank 0 speaks for every rank
    # ---- the run already in run_dir continues only with its own recipe and data
    data = runs.data_hash(train_subjects, reference)
    state = runs.read_state(run_dir) if resume else None
    if state is not None:
        saved = TrainConfig(**state["train_config"])
        runs.check_recipe(run_dir, saved.to_dict(), config and config.to_dict(), state["data"], data)
        config = saved
    config = config or TrainConfig()
    if world > 1 and any(st.batch_voxels % world for st in config.stages):
        raise ConfigError(f"batch_voxels must be divisible by the number of processes ({world})")
    check_image_pools(config, [len(s.unique_idx) for s in train_subjects])
    if not resume and main:
        runs.start_over(run_dir)
    n_stages, stage_steps = len(config.stages), [st.steps for st in config.stages]
    if state is not None and state["stage"] >= n_stages:
        say(f"{run_dir} holds a finished run: nothing to train (use a new folder, or resume=False to train again)")
        model = BraInCoRL(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        return model.to(device).eval()
    torch.manual_seed(config.seed)
    if device.type == "cuda":  # TF32 matmuls: ample precision for training, much faster
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # ---- what the run may learn from: measured responses only, unless this is the truth ablation
    if config.supervision == "measured":
        train_subjects = strip_truth(train_subjects)
        mean, cov, noise_var = measured_prior(train_subjects, encoders=reference)
    else:
        mean, cov, noise_var = truth_prior(train_subjects)
    feats = np.vstack([s.features[s.unique_idx] for s in train_subjects])
    subj_tasks = SubjectVoxels(train_subjects, device=device, seed=config.seed + 1,
                               use_truth=config.supervision == "truth")
    synth = GaussianVoxels(feats, mean, cov, noise_var, device=device, seed=config.seed + 2)

    # ---- model (resumed, or new with a PCA basis of the training images) and optimiser
    model = BraInCoRL(ModelConfig.from_dict(state["model_config"] if state is not None else
                                            {**config.model, "n_components": config.n_components})).to(device)
    if state is None and config.n_components is not None:
        model.set_feature_transform(*pca_feature_transform(feats, config.n_components, whiten=config.whiten))
    model.train()
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        extra["distributed"] = {"world_size": world, "backend": torch.distributed.get_backend()}
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=1e-4)
    generators = {"synthetic": synth.gen, "subjects": subj_tasks.gen}
    rng = np.random.default_rng(config.seed + 3)  # draws the support size of each step
    start_stage, start_step, elapsed0 = 0, 0, 0.0
    if state is not None:
        runs.restore(state, model, optimizer, generators, rng, stage_steps, run_dir)
        start_stage, start_step, elapsed0 = state["stage"], state["step"], state["train_seconds"]
        say(f"resuming {run_dir} at stage {start_stage + 1} step {start_step}")
    budget = math.inf if config.max_minutes is None else 60 * config.max_minutes
    if elapsed0 >= budget:
        say(f"{run_dir} has used its time budget ({config.max_minutes} min): nothing to train")
        return model.eval()
    if main:
        runs.cut_log(run_dir / runs.LOG, runs.steps_before(stage_steps, start_stage, start_step))

    # ---- the loop: one episode per step; a checkpoint every checkpoint_every steps and at each stage's end
    t0 = time.perf_counter()
    clock = lambda: elapsed0 + time.perf_counter() - t0  # noqa: E731
    saved_at, done, halt, out_of_time = None, 0, False, False

    def save(stage_idx, step):
        nonlocal saved_at
        if main:
            head = {"train_config": config.to_dict(), "stage": stage_idx, "step": step, "train_seconds": clock()}
            runs.save(run_dir, model, optimizer, generators, rng, head, extra, data, log)
        if world > 1:
            torch.distributed.barrier()
        saved_at = (stage_idx, step)
        runs.release_freed_memory()

    with open(run_dir / runs.LOG, "a") if main else nullcontext() as log, runs.CtrlC(run_dir, world == 1) as ctrl_c:
        for si in range(start_stage, n_stages):
            stage = config.stages[si]
            source = synth if stage.name in ("pretrain", "extend") else subj_tasks
            loss_name = config.stage_loss(stage)
            warmup = max(1, int(config.warmup_fraction * stage.steps))
            first = start_step if si == start_stage else 0
            bar = tqdm(range(first, stage.steps), desc=f"stage {si + 1}/{n_stages} {stage.name}",
                       disable=not (progress and main), initial=first, total=stage.steps)
            running = None
            for step in bar:
                k = int(rng.integers(stage.k_min, stage.k_max + 1))
                batch = source.sample(stage.batch_voxels, k, stage.n_query if loss_name == "query" else 0)
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
                kept = f"training stopped, nothing of this step was saved ({run_dir} keeps its last checkpoint)"
                if not math.isfinite(value):
                    raise NonFiniteError(f"the loss is {value} at {where}: {kept}; try a lower learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                if not math.isfinite(gnorm):
                    raise NonFiniteError(f"the gradient norm is {gnorm} at {where}: {kept}")
                optimizer.step()
                running = value if running is None else 0.98 * running + 0.02 * value
                bar.set_postfix(loss=f"{running:.4f}", k=k)

                row = {"stage": stage.name, "step": step, "k": k, "loss": value, "lr": lr, "grad_norm": gnorm}
                n_done = runs.steps_before(stage_steps, si, step + 1)
                if main and callback is not None and (n_done % eval_every == 0 or n_done == sum(stage_steps)):
                    row.update(_evaluate(callback, n_done, model))
                if main:
                    log.write(json.dumps({**row, "seconds": clock()}, allow_nan=False) + "\n")
                done += 1
                out_of_time = clock() >= budget
                if world > 1 and budget < math.inf:  # rank 0's clock decides for every rank
                    flag = torch.tensor(float(out_of_time), device=device)
                    torch.distributed.broadcast(flag, 0)
                    out_of_time = bool(flag)
                halt = ctrl_c.hit or out_of_time or (stop_after_steps is not None and done >= stop_after_steps)
                if step + 1 == stage.steps:
                    if world > 1 and si + 1 == n_stages:
                        extra["distributed"]["max_param_diff_across_ranks"] = ranks_param_diff(model)
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
    if out_of_time and saved_at[0] < n_stages:
        say(f"time budget of {config.max_minutes} min used: {run_dir} was saved at stage {saved_at[0] + 1} "
            f"step {saved_at[1]}")
    return model.eval()


def _evaluate(callback, step: int, model) -> dict:
    """``callback(step, model)`` in eval mode, random states kept; its result as log entries
    (non-finite numbers as null: the log is strict JSON)."""
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        model.eval()
        result = callback(step, model)
        model.train()
    items = result.items() if isinstance(result, dict) else [] if result is None else [("eval", result)]
    return {k: float(v) if math.isfinite(float(v)) else None for k, v in items}


# ---------------------------------------------------------------------------------- helpers
def measure_step_time(train_subjects, config: TrainConfig, device=None, n_steps: int = 15) -> float:
    """Seconds per training step of ``config`` on ``device`` (median of a few warm steps)."""
    import tempfile

    k = config.stages[1].k_max // 2
    cfg = TrainConfig(**{**config.to_dict(), "max_minutes": None, "checkpoint_every": 10 ** 9, "stages": [
        {**asdict(config.stages[1]), "steps": n_steps, "k_min": k, "k_max": k}]})
    with tempfile.TemporaryDirectory() as tmp:
        train(train_subjects, tmp, cfg, device=device, resume=False, progress=False)
        seconds = read_log(tmp).seconds.to_numpy()
    return float(np.median(np.diff(seconds)[3:]))


def read_log(run_dir):
    """The training log of a run as a pandas DataFrame (one row per step)."""
    import pandas as pd

    return pd.read_json(Path(run_dir) / runs.LOG, lines=True)


def count_parameters(config) -> int:
    """Trainable parameters of a :class:`~braincorl_lite.model.BraInCoRL` with this configuration.

    The model is built on PyTorch's ``meta`` device: no memory is allocated, even for the
    published 97M-parameter configuration.

    >>> count_parameters(ModelConfig.paper())
    97074852
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    with torch.device("meta"):
        return BraInCoRL(config).n_parameters()


def stage_summary(log, tail: float = 0.1):
    """One row per training stage of a log from :func:`read_log`.

    Parameters
    ----------
    log : pandas.DataFrame
        Columns ``stage, step, k, loss, seconds`` (one row per step).
    tail : float
        Fraction of the first and last steps of a stage averaged into ``first_loss`` and
        ``final_loss`` (the per-step loss is noisy: every step draws new voxels and a new K).

    Returns
    -------
    pandas.DataFrame
        Indexed by stage (in training order): ``steps, first_loss, final_loss, k_min, k_max, seconds``.
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
