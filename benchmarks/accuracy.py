"""Accuracy of checkpoints across held-out people: EV against K for every method, over subject seeds.

For each subject seed (new people in the same stimulus world) one held-out subject is evaluated:
support images from its unique images, explained variance on its shared images, the same support
sets for every method. Methods: every checkpoint given (``--checkpoint NAME=PATH``, repeatable),
ridge (himalaya, cross-validated penalty per voxel), ridge with the paper's protocol
(``ridge_paper``), the Bayes oracle and the fully trained encoder. The summary gives mean and
standard deviation across seeds per method and K, each checkpoint's fraction of the oracle, and
how many images ridge needs to match it. This is the table of the model card:

    python benchmarks/accuracy.py \\
        --checkpoint measured=braincorl_lite/checkpoints/simnsd_lite.safetensors \\
        --checkpoint truth_ablation=braincorl_lite/checkpoints/simnsd_lite_truth_ablation.safetensors \\
        --seeds 1,2,3 --k 10,30,100,300,1000 --voxels 1000 \\
        --out braincorl_lite/checkpoints/simnsd_lite_evaluation.csv

    python benchmarks/accuracy.py --dataset simb5k --seeds 1,2     # the shipped model on SimB5K

Writes every row to ``--out`` (default ``benchmarks/results/accuracy_<dataset>.csv``) and prints
the summary as Markdown tables. Everything here is simulated data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def summary_tables(table, ks):
    """Mean and sd over seeds (roi "all"), and per checkpoint its fraction of the oracle and ridge's match."""
    import pandas as pd

    from braincorl_lite.evaluation import images_to_match

    per_seed = table[table.roi == "all"].groupby(["method", "k", "seed"]).ev.mean().unstack("seed")
    mean, sd = per_seed.mean(axis=1).unstack("method"), per_seed.std(axis=1, ddof=1).unstack("method")
    baselines = {"ridge", "ridge_paper", "oracle", "fully_trained", "anatomical"}
    models = [m for m in dict.fromkeys(table.method) if m not in baselines]
    rows = []
    for m in models:
        for k in ks:
            ev = per_seed.loc[(m, k)]
            ridge_curve = [per_seed.loc[("ridge", kk)] for kk in ks]
            need = [images_to_match(ks, [c[s] for c in ridge_curve], ev[s]) for s in per_seed.columns]
            row = {"model": m, "K": k, "EV mean": ev.mean(), "EV sd": ev.std(ddof=1),
                   "ridge mean": per_seed.loc[("ridge", k)].mean(),
                   "mean - sd > ridge mean": bool(ev.mean() - ev.std(ddof=1) > per_seed.loc[("ridge", k)].mean()),
                   "ridge images to match (median over seeds)": float(np.median(need))}
            if ("oracle", k) in per_seed.index:
                row["fraction of oracle"] = float((ev / per_seed.loc[("oracle", k)]).mean())
            rows.append(row)
    return mean, sd, pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[],
                   help="NAME=PATH of a model to evaluate (repeatable; default: the shipped model as 'braincorl')")
    p.add_argument("--dataset", choices=["simnsd", "simb5k"], default="simnsd")
    p.add_argument("--seeds", default="1,2,3", help="subject seeds (the shipped model was trained on seed 0)")
    p.add_argument("--heldout", type=int, default=0, help="0-based position of the evaluated subject")
    p.add_argument("--k", default="10,30,100,300,1000")
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--voxels", type=int, default=0, help="random voxels per person (0: all)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from braincorl_lite.baselines import fully_trained
    from braincorl_lite.datasets import load_dataset
    from braincorl_lite.evaluation import braincorl_method, evaluate_subject, few_shot_methods
    from braincorl_lite.checkpoint import load_checkpoint, pretrained_path

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoint:
        args.checkpoint = [f"braincorl={pretrained_path()}"]
    models = {}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        models[name] = load_checkpoint(path, device="cpu")[0]
    ks = [int(k) for k in args.k.split(",")]
    tables = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        ds = load_dataset(args.dataset, seed=seed)
        subj = ds[args.heldout]
        if args.voxels and args.voxels < subj.n_voxels:
            rng = np.random.default_rng(seed)
            subj = subj.select_voxels(np.sort(rng.choice(subj.n_voxels, args.voxels, replace=False)))
        methods = {name: braincorl_method(m) for name, m in models.items()}
        methods.update(few_shot_methods(subj, ds.subject_prior(args.heldout), ("ridge", "ridge_paper", "oracle")))
        # ridge is voxelwise (one penalty per voxel), so fitting the subset alone changes nothing
        t = evaluate_subject(subj, ks, methods, n_draws=args.draws, seed=seed,
                             fully_trained_encoder=fully_trained(subj))
        tables.append(t.assign(seed=seed))
        print(f"seed {seed}: {subj.subject}, {subj.n_voxels} voxels, {time.perf_counter() - t0:.0f} s", flush=True)
    table = pd.concat(tables, ignore_index=True)
    out = Path(args.out or HERE / "results" / f"accuracy_{args.dataset}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)

    mean, sd, per_model = summary_tables(table, ks)
    n = table.seed.nunique()
    print(f"\n{args.dataset} (simulated): mean EV (sd over {n} subject seeds), all evaluated voxels\n")
    cols = [c for c in list(models) + ["ridge", "ridge_paper", "oracle", "fully_trained"] if c in mean]
    fmt = mean[cols].map(lambda v: f"{v:.4f}").astype(object)
    for c in cols:
        for k in mean.index:
            if np.isfinite(sd.loc[k, c]):
                fmt.loc[k, c] = f"{mean.loc[k, c]:.4f} ({sd.loc[k, c]:.4f})"
    print(fmt.to_markdown())
    print("\n" + per_model.round(3).to_markdown(index=False))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
