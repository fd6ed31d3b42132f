"""Time and peak memory to produce encoders for many voxels: BraInCoRL-lite vs cross-validated ridge.

Each measurement runs in a fresh Python process so that its peak resident memory (ru_maxrss) is
its own. The support images are SimNSD images; the responses are random numbers (the amount of
work does not depend on their values).

    python benchmarks/speed.py                          # shipped model and ridge, CPU
    python benchmarks/speed.py --models shipped,lite,paper --voxels 1000,10000,40000 --k 100,1000
    python benchmarks/speed.py --device cuda --dtype bfloat16

Prints a table and writes ``benchmarks/results/speed_<device>.csv``. Configurations whose time,
extrapolated from a smaller measured one, exceeds ``--max-seconds`` are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _one(spec: dict) -> dict:
    """Run one measurement (in this process) and return its figures."""
    import resource

    import numpy as np
    import torch

    from braincorl_lite.simulate import World

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    rng = np.random.default_rng(0)
    x = World(0).sample_images(spec["k"], rng)["features"]
    y = rng.standard_normal((spec["k"], spec["voxels"])).astype(np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if spec["model"] == "ridge":
        from braincorl_lite.baselines import fit_ridge

        t0 = time.perf_counter()
        fit_ridge(x, y)
        seconds = time.perf_counter() - t0
        n_params = 0
    else:
        from braincorl_lite.checkpoint import load_pretrained
        from braincorl_lite.model import BraInCoRL, ModelConfig, fit_braincorl

        if spec["model"] == "shipped":
            model = load_pretrained(device=spec["device"])
        else:
            cfg = ModelConfig.paper() if spec["model"] == "paper" else ModelConfig.lite()
            model = BraInCoRL(cfg).to(spec["device"])
        if spec["dtype"] != "float32":
            model = model.to(getattr(torch, spec["dtype"]))
        n_params = model.n_parameters()
        fit_braincorl(model, x, y[:, : min(64, spec["voxels"])], chunk_size=spec["chunk"])  # warm-up
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fit_braincorl(model, x, y, chunk_size=spec["chunk"])
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {**spec, "seconds": seconds, "voxels_per_second": spec["voxels"] / seconds,
           "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base) / 1024, "n_parameters": n_params}
    if spec["device"].startswith("cuda") and spec["model"] != "ridge":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="shipped,lite,ridge", help="shipped, lite, paper, ridge")
    p.add_argument("--voxels", default="1000,10000,40000")
    p.add_argument("--k", default="100,1000")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (CUDA)")
    p.add_argument("--chunk", type=int, default=256, help="voxels per forward pass")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--out", default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(_one(json.loads(args.one))))
        return 0

    import pandas as pd

    rows = []
    for model in args.models.split(","):
        for k in [int(v) for v in args.k.split(",")]:
            rate = None  # voxels per second of the last measured size, to extrapolate
            for n in sorted(int(v) for v in args.voxels.split(",")):
                spec = {"model": model, "voxels": n, "k": k, "device": args.device, "dtype": args.dtype,
                        "chunk": args.chunk, "threads": args.threads}
                if rate is not None and n / rate > args.max_seconds:
                    rows.append({**spec, "skipped": f"about {n / rate:.0f} s expected"})
                    print(f"{model:8s} K={k:5d} {n:6d} voxels: skipped (about {n / rate:.0f} s expected)")
                    continue
                res = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                     capture_output=True, text=True)
                if res.returncode:
                    print(res.stderr[-2000:])
                    rows.append({**spec, "skipped": "failed"})
                    continue
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rate = row["voxels_per_second"]
                rows.append(row)
                print(f"{model:8s} K={k:5d} {n:6d} voxels: {row['seconds']:8.2f} s, "
                      f"peak RSS {row['peak_rss_mb']:7.0f} MB" +
                      (f", peak GPU {row['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in row else ""), flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out or HERE / "results" / f"speed_{args.device.split(':')[0]}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
