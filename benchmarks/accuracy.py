"""Accuracy of a checkpoint across held-out people: EV vs K for every method, over subject seeds.

For each subject seed (new people in the same world) one held-out subject is evaluated with
``braincorl_lite.evaluation.evaluate_heldout`` (EV on its shared images). The summary gives the
mean and standard deviation across seeds per method and K, the ratios braincorl / ridge and
braincorl / oracle, and how many images ridge needs to match braincorl at K = 100.

    python benchmarks/accuracy.py                                # SimNSD, seeds 1-3
    python benchmarks/accuracy.py --dataset simb5k --seeds 5001,5002

Writes ``benchmarks/results/accuracy_<dataset>.csv`` (every row) and prints the summary.
Everything here is simulated data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: the shipped checkpoint")
    p.add_argument("--dataset", choices=["simnsd", "simb5k"], default="simnsd")
    p.add_argument("--seeds", default="1,2,3", help="subject seeds (the shipped model was trained on seed 0)")
    p.add_argument("--heldout-subject", type=int, default=1)
    p.add_argument("--k", default="10,30,100,300")
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--no-anatomical", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)

    import pandas as pd

    from braincorl_lite.cli import shipped_checkpoint
    from braincorl_lite.evaluation import evaluate_heldout, images_to_match
    from braincorl_lite.model import load_checkpoint
    from braincorl_lite.simulate import simulate_simb5k, simulate_simnsd

    model, _ = load_checkpoint(args.checkpoint or shipped_checkpoint(), device="cpu")
    ks = [int(k) for k in args.k.split(",")]
    sim = simulate_simnsd if args.dataset == "simnsd" else simulate_simb5k
    tables = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        ds = sim("default", subject_seed=seed)
        t = evaluate_heldout(model, ds, args.heldout_subject, ks, n_draws=args.draws,
                             anatomical=not args.no_anatomical, progress=False)
        t["seed"] = seed
        tables.append(t)
        print(f"seed {seed}: done", flush=True)
    table = pd.concat(tables)
    out = Path(args.out or HERE / "results" / f"accuracy_{args.dataset}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)

    per_seed = table[table.roi == "all"].groupby(["method", "k", "seed"]).ev.mean().unstack("seed")
    summary = pd.DataFrame({"mean": per_seed.mean(axis=1), "sd": per_seed.std(axis=1, ddof=1)})
    print(f"\n{args.dataset} (simulated), {per_seed.shape[1]} subject seeds, mean EV over all voxels:")
    print(summary.unstack("method").round(4).to_string())
    rows = []
    for k in ks:
        bc, ridge = per_seed.loc[("braincorl", k)], per_seed.loc[("ridge", k)]
        # near-zero or negative ridge EV makes a ratio meaningless: report the difference too
        row = {"K": k, "braincorl mean - sd": bc.mean() - bc.std(ddof=1), "ridge mean": ridge.mean(),
               "braincorl - ridge": (bc - ridge).mean(),
               "braincorl / ridge": (bc / ridge).mean() if (ridge > 0.01).all() else float("nan")}
        if ("oracle", k) in per_seed.index:
            row["braincorl / oracle"] = (bc / per_seed.loc[("oracle", k)]).mean()
        rows.append(row)
    print("\n" + pd.DataFrame(rows).set_index("K").round(3).to_string())
    if 100 in ks:
        need = [images_to_match(ks, [per_seed.loc[("ridge", k), s] for k in ks], per_seed.loc[("braincorl", 100), s])
                for s in per_seed.columns]
        print(f"\nimages ridge needs to match braincorl at K = 100, per seed: "
              f"{', '.join('>' + str(max(ks)) if np.isinf(n) else f'{n:.0f}' for n in need)}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
