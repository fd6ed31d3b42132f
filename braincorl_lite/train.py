"""Meta-training of the in-context encoder in three stages, as published.

1. **pretrain** — synthetic voxels: weights drawn from one Gaussian fitted to the training
   subjects' voxel weights, Gaussian noise, a fixed support size.
2. **extend** — the same synthetic voxels with a support size drawn per batch, ``K ~ U(k_min, k_max)``.
3. **finetune** — the training subjects' own voxels (one or more subjects held out).

Every step draws one set of K support images and B voxels that all see them (one subject's
voxels do see the same images), so one forward pass trains B tasks.

Loss
----
``loss="query"`` is the published one: the mean squared error on held-out query images of the
same voxels. With ground truth (synthetic voxels always; SimNSD subjects; on NSD the fully
trained encoders play that role) ``loss="population"`` compares the predicted and the true
encoders through the image distribution: ``(theta_hat - theta)^T M (theta_hat - theta)`` with
``M = E[phi phi^T]``, ``phi = [x, 1]``, which is the query error on infinitely many noise-free
query images. Its minimiser is the Bayes posterior mean, the oracle of
:func:`braincorl_lite.baselines.bayes_oracle`. Both are divided by each voxel's response
variance, so every voxel counts the same (like EV).

Runs are resumable: ``run_dir`` holds ``model.safetensors`` (+ ``model.json``), the optimiser
state ``optimizer.safetensors`` and ``state.json`` (stage, step, random states), written every
``checkpoint_every`` steps and at the end of each stage, and ``log.jsonl`` (loss per step).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .data import SubjectData
from .model import BraInCoRL, ModelConfig, load_checkpoint, pca_feature_transform, save_checkpoint

__all__ = ["StageConfig", "TrainConfig", "GaussianVoxels", "SubjectVoxels", "train", "default_stages",
           "population_loss", "query_loss", "fit_gaussian", "read_log", "count_parameters",
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
        Support size range; ``pretrain`` uses ``k_max`` only.
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
            raise ValueError(f"unknown stage {self.name!r}: use pretrain, extend or finetune")
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")


def default_stages(scale: float = 1.0, k_max: int = 500) -> List[StageConfig]:
    """The three stages with step counts multiplied by ``scale`` (1.0: the shipped model's recipe)."""
    n = lambda s: max(1, int(round(s * scale)))  # noqa: E731
    return [StageConfig("pretrain", n(1500), k_min=k_max // 2, k_max=k_max // 2, lr=1e-3),
            StageConfig("extend", n(1500), k_min=5, k_max=k_max, lr=5e-4),
            StageConfig("finetune", n(1000), k_min=5, k_max=k_max, lr=2e-4)]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint metadata)."""

    model: dict = field(default_factory=lambda: ModelConfig.lite().to_dict())
    stages: List[StageConfig] = field(default_factory=default_stages)
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
            raise ValueError("loss must be 'population' or 'query'")

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
    other unique images. ``theta`` is the ground truth when the subjects carry it (SimNSD), else
    the encoders given in ``reference`` (e.g. fully trained ones on NSD).
    """

    def __init__(self, subjects: Sequence[SubjectData], device="cpu", seed=0, reference=None):
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.subjects = []
        for i, s in enumerate(subjects):
            uniq = s.unique_idx
            entry = {"x": torch.as_tensor(s.features[uniq], device=self.device),
                     "y": torch.as_tensor(s.betas[uniq], device=self.device)}
            if s.truth is not None:
                theta = np.hstack([s.truth.weights, s.truth.bias[:, None]])
            elif reference is not None:
                W, b = reference[i]
                theta = np.hstack([W, b[:, None]])
            else:
                theta = None
            if theta is not None:
                entry["theta"] = torch.as_tensor(theta, dtype=torch.float32, device=self.device)
            entry["var"] = entry["y"].var(0)
            self.subjects.append(entry)
        x_all = torch.cat([e["x"] for e in self.subjects])
        phi = torch.cat([x_all, torch.ones(len(x_all), 1, device=self.device)], 1)
        self.M = phi.T @ phi / len(phi)

    @property
    def has_truth(self) -> bool:
        return all("theta" in e for e in self.subjects)

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
# Training loop
# --------------------------------------------------------------------------------------------
def _distributed():
    """``(rank, world_size, local_rank)``; joins the process group when started by ``torchrun``."""
    import os

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


def _save_state(run_dir: Path, model, optimizer, stage_idx, step, config, extra, generators, rng):
    from safetensors.torch import save_file

    meta = {"train_config": config.to_dict(), "stage": stage_idx, "step": step, **extra}
    save_checkpoint(model, run_dir / "model.safetensors", metadata=meta)
    tensors, params = {}, {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            name = params[id(p)]
            tensors[f"{name}::exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
            tensors[f"{name}::exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
            tensors[f"{name}::step"] = torch.as_tensor(st["step"]).reshape(1).float().cpu()
    for key, gen in generators.items():
        tensors[f"rng::{key}"] = gen.get_state().cpu()
    tensors["rng::torch"] = torch.get_rng_state()
    tmp = run_dir / "optimizer.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(run_dir / "optimizer.safetensors")
    state = {"stage": stage_idx, "step": step, "numpy_rng": rng.bit_generator.state, **extra}
    (run_dir / "state.json").write_text(json.dumps(state, indent=1))


def _load_optimizer(run_dir: Path, model, optimizer, generators):
    from safetensors.torch import load_file

    path = run_dir / "optimizer.safetensors"
    if not path.exists():
        return
    tensors = load_file(str(path))
    for key, gen in generators.items():
        if f"rng::{key}" in tensors:
            gen.set_state(tensors[f"rng::{key}"])
    if "rng::torch" in tensors:
        torch.set_rng_state(tensors["rng::torch"])
    for name, p in model.named_parameters():
        if f"{name}::exp_avg" in tensors:
            optimizer.state[p] = {
                "exp_avg": tensors[f"{name}::exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{name}::exp_avg_sq"].to(p.device),
                "step": torch.tensor(float(tensors[f"{name}::step"][0])),
            }


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
        Output folder (checkpoints, log). An unfinished run there is resumed when ``resume``.
    config : TrainConfig
    device : str, optional
        ``"cuda"`` when available, else ``"cpu"``.
    reference : list of (W, b), optional
        Encoders standing in for the ground truth of subjects without it (e.g. fully trained).
    stop_after_steps : int, optional
        Save and return after this many steps of this call (a run to be resumed later).

    Returns
    -------
    BraInCoRL
        The trained model (in eval mode); also saved as ``run_dir/model.safetensors``.

    Notes
    -----
    Under ``torchrun --nproc_per_node=N`` the run is data-parallel (DistributedDataParallel; gloo
    on CPU, nccl on GPU): every rank draws the same episode and trains on its share of the
    ``batch_voxels`` voxels, gradients are averaged, so each step equals one single-process step
    on the whole batch. Rank 0 writes the log and the checkpoints.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    rank, world, local_rank = _distributed()
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if world > 1 and any(st.batch_voxels % world for st in config.stages):
        raise ValueError(f"batch_voxels must be divisible by the number of processes ({world})")
    main = rank == 0
    progress = progress and main
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if device.type == "cuda":  # TF32 matmuls: ample precision for training, much faster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    extra = dict(extra_metadata or {})

    # ---- the prior of the synthetic stages: one Gaussian over the training voxels' parameters
    subj_tasks = SubjectVoxels(train_subjects, device=device, seed=config.seed + 1, reference=reference)
    if not subj_tasks.has_truth and config.loss == "population":
        raise ValueError("loss='population' needs ground truth or reference encoders for every subject")
    theta_all = np.vstack([e["theta"].cpu().numpy() for e in subj_tasks.subjects]) if subj_tasks.has_truth else None
    feats = np.vstack([s.features[s.unique_idx] for s in train_subjects])
    noise_var = np.concatenate([
        s.truth.effective_noise_var(s.n_repeats) if s.truth is not None else s.betas.var(0) * (1 - s.noise_ceiling)
        for s in train_subjects])
    if theta_all is None:
        raise ValueError("the synthetic stages need voxel weights: pass reference encoders")
    mean, cov = fit_gaussian(theta_all)
    synth = GaussianVoxels(feats, mean, cov, noise_var, device=device, seed=config.seed + 2)

    # ---- model (resumed, or new with a PCA basis of the training images)
    state_path = run_dir / "state.json"
    start_stage, start_step = 0, 0
    if resume and state_path.exists():
        model, meta = load_checkpoint(run_dir / "model.safetensors", device=device)
        state = json.loads(state_path.read_text())
        start_stage, start_step = state["stage"], state["step"]
        config = TrainConfig(**meta["train_config"])  # the run's own recipe, not a new one
        if main:
            print(f"resuming {run_dir} at stage {start_stage + 1} step {start_step}")
    else:
        mcfg = ModelConfig.from_dict({**config.model, "n_components": config.n_components})
        model = BraInCoRL(mcfg).to(device)
        if config.n_components is not None:
            m, proj = pca_feature_transform(feats, config.n_components, whiten=config.whiten)
            model.set_feature_transform(m, proj)
        if main:
            (run_dir / "log.jsonl").write_text("")
    model.train()
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    generators = {"synthetic": synth.gen, "subjects": subj_tasks.gen}
    rng = np.random.default_rng(config.seed + 3)  # draws the support size of each step
    elapsed0 = 0.0
    if start_stage or start_step:
        _load_optimizer(run_dir, model, optimizer, generators)
        state = json.loads(state_path.read_text())
        if "numpy_rng" in state:
            rng.bit_generator.state = state["numpy_rng"]
        elapsed0 = state.get("train_seconds", 0.0)
    if start_stage >= len(config.stages) and main:
        print(f"{run_dir} holds a finished run; nothing to do (use a new folder or resume=False)")
    if world > 1:
        extra["distributed"] = {"world_size": world, "backend": torch.distributed.get_backend()}

    def save(stage_idx, step):
        if main:
            extra["train_seconds"] = elapsed0 + time.perf_counter() - t0
            _save_state(run_dir, model, optimizer, stage_idx, step, config, extra, generators, rng)
        if world > 1:
            torch.distributed.barrier()

    log = open(run_dir / "log.jsonl", "a") if main else None
    t0 = time.perf_counter()
    done, stop = 0, False
    for si in range(start_stage, len(config.stages)):
        stage = config.stages[si]
        source = synth if stage.name in ("pretrain", "extend") else subj_tasks
        warmup = max(1, int(config.warmup_fraction * stage.steps))
        first = start_step if si == start_stage else 0
        bar = tqdm(range(first, stage.steps), desc=f"stage {si + 1}/{len(config.stages)} {stage.name}",
                   disable=not progress, initial=first, total=stage.steps)
        running = None
        for step in bar:
            k = stage.k_max if stage.name == "pretrain" else int(rng.integers(stage.k_min, stage.k_max + 1))
            nq = stage.n_query if config.loss == "query" else 0
            batch = source.sample(stage.batch_voxels, k, nq)
            if world > 1:
                batch = batch.shard(rank, world)
            lr = _lr_at(step, stage, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            hw = net(batch.support_x, batch.support_y)
            if config.loss == "population":
                loss = population_loss(hw, batch.theta, source.M, batch.norm)
            else:
                loss = query_loss(hw, batch.query_x, batch.query_y, batch.norm)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            value = loss.detach()
            if world > 1:  # the mean over ranks is the loss of the whole batch
                torch.distributed.all_reduce(value)
                value = value / world
            value = float(value)
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.set_postfix(loss=f"{running:.4f}", k=k)
            if log is not None:
                log.write(json.dumps({"stage": stage.name, "step": step, "k": k, "loss": value, "lr": lr,
                                      "grad_norm": float(gnorm),
                                      "seconds": elapsed0 + time.perf_counter() - t0}) + "\n")
            done += 1
            stop = stop_after_steps is not None and done >= stop_after_steps and step + 1 < stage.steps
            if ((step + 1) % config.checkpoint_every == 0 and step + 1 < stage.steps) or stop:
                if log is not None:
                    log.flush()
                save(si, step + 1)
            if stop:
                break
        bar.close()
        if stop:
            break
        save(si + 1, 0)
        if stop_after_steps is not None and done >= stop_after_steps:
            break
    if world > 1:
        _check_ranks_agree(model, run_dir, main)
    if log is not None:
        log.close()
    model.eval()
    return model


def _check_ranks_agree(model, run_dir: Path, main: bool) -> None:
    """Gather every rank's parameters and record on rank 0 how far apart they are (should be 0)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if main:
        diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
        state = json.loads((run_dir / "state.json").read_text())
        state["distributed"]["max_param_diff_across_ranks"] = diff
        (run_dir / "state.json").write_text(json.dumps(state, indent=1))
    dist.barrier()


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
    97070372
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
