"""Meta-training throughput (episodes per second) and encoder speed, with and without the model's
exact shortcuts (``BraInCoRL.fast_paths``), on this machine.

One training step = one batch of voxel tasks (episodes) that share K support images: forward,
population loss, backward and an AdamW update, as in ``braincorl_lite.training``. Inference = the
encoders of many voxels from K = 100 shared support images (``fit_braincorl``). The two
settings alternate within one process so that a busy machine affects both alike.

    python benchmarks/throughput.py                  # CPU, lite and shipped configurations
    python benchmarks/throughput.py --device cuda

Prints a table and writes ``benchmarks/results/throughput_<device>.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _train_steps(model, x, M, batch, k, n_steps, device, seed=0):
    """Median seconds per training step (population loss, AdamW) over ``n_steps`` warm steps."""
    from braincorl_lite.tasks import population_loss

    g = torch.Generator(device="cpu").manual_seed(seed)
    E = x.shape[1]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    model.train()
    times = []
    for step in range(n_steps + 2):
        idx = torch.randperm(len(x), generator=g)[:k]
        theta = torch.randn(batch, E + 1, generator=g) * 0.05
        xs = x[idx]
        y = (xs @ theta[:, :E].T + theta[:, E]).T + torch.randn(batch, k, generator=g)
        xs, y, theta = xs.to(device), y.to(device), theta.to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        hw = model(xs, y)
        loss = population_loss(hw, theta, M, torch.ones(batch, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    model.eval()
    return float(np.median(times))


def _inference(model, x, n_voxels, k, chunk, device):
    from braincorl_lite.model import fit_braincorl

    rng = np.random.default_rng(0)
    y = rng.standard_normal((k, n_voxels)).astype(np.float32)
    fit_braincorl(model, x[:k], y[:, :64], chunk_size=chunk)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fit_braincorl(model, x[:k], y, chunk_size=chunk)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="lite,shipped")
    p.add_argument("--batch", type=int, default=64, help="voxel tasks per training step")
    p.add_argument("--k-train", type=int, default=250, help="support images per training episode")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per setting and repeat")
    p.add_argument("--voxels", type=int, default=10000, help="voxels for the inference timing")
    p.add_argument("--k", type=int, default=100, help="support images for the inference timing")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats of (plain, fast)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import pandas as pd

    from braincorl_lite.checkpoint import load_pretrained
    from braincorl_lite.model import BraInCoRL, ModelConfig
    from braincorl_lite.simulate import World

    x = torch.as_tensor(World(0).sample_images(2000, np.random.default_rng(0))["features"])
    phi = torch.cat([x, torch.ones(len(x), 1)], 1)
    M = (phi.T @ phi / len(phi)).to(args.device)
    rows = []
    for name in args.models.split(","):
        if name == "shipped":
            model = load_pretrained(device=args.device)
        else:
            torch.manual_seed(0)
            model = BraInCoRL(ModelConfig.lite()).to(args.device)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for rep in range(args.repeats):
            for fast in (False, True):
                model.load_state_dict(state)
                model.fast_paths = fast
                step = _train_steps(model, x, M, args.batch, args.k_train, args.steps, args.device, seed=rep)
                inf = _inference(model, x.numpy(), args.voxels, args.k, args.chunk, args.device)
                row = {"model": name, "paths": "fast" if fast else "plain", "repeat": rep,
                       "train_seconds_per_step": step, "episodes_per_second": args.batch / step,
                       "inference_seconds": inf, "voxels": args.voxels, "k": args.k,
                       "batch": args.batch, "k_train": args.k_train, "device": args.device,
                       "threads": torch.get_num_threads()}
                rows.append(row)
                print(f"{name:8s} {row['paths']:5s} rep {rep}: train {step:6.3f} s/step "
                      f"({row['episodes_per_second']:6.1f} episodes/s), encoders for {args.voxels} voxels "
                      f"at K={args.k}: {inf:6.1f} s", flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby(["model", "paths"])[["episodes_per_second", "inference_seconds"]].median()
    print("\nmedian over repeats:")
    print(summary.round(2).to_string())
    out = Path(args.out or HERE / "results" / f"throughput_{args.device.split(':')[0]}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
