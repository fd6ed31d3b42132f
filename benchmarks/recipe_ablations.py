"""Small, otherwise identical models that differ in one ingredient of the training recipe.

Each variant is meta-trained (measured supervision, SimNSD subject seed 0, subject 1 held out)
with the same seeds and steps, then evaluated on new people (subject 1 of subject seed 1) at
K = 10 ... 1000 on a fixed random subset of voxels. Variants:

* ``base``: the shipped recipe's ingredients (log(N) attention scaling, stages 2-3 K ~ U(5, 500));
* ``no_log_n``: without the log(N) scaling of the attention (the paper credits it with
  extrapolating to more support images than seen in training, here K = 1000 > 500);
* ``k_min_30``: stages 2-3 draw K ~ U(30, 500), the official stage-2 range;
* ``truth``: the privileged recipe (true weights as targets): how much that signal is worth (the
  shipped model's model card compares the full-size pair).

    python benchmarks/recipe_ablations.py           # base, no_log_n, k_min_30; 2 training seeds
    python benchmarks/recipe_ablations.py --variants base,no_log_n --train-seeds 0

Writes ``braincorl_lite/checkpoints/recipe_ablations.csv`` (chapter 2 reads it) and prints EV per variant and K (mean over
training seeds) and each variant's difference from ``base``. Simulated data only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

VARIANTS = {
    "base": {},
    "no_log_n": {"model": {"log_n_scaling": False}},
    "k_min_30": {"k_min": 30},
    "truth": {"supervision": "truth"},
}


def make_config(variant: str, seed: int, scale: float, d_model: int, layers: int):
    from braincorl_lite.model import ModelConfig
    from braincorl_lite.training import TrainConfig, default_stages

    change = VARIANTS[variant]
    model = ModelConfig.lite(d_model=d_model, n_layers=layers, n_heads=max(1, d_model // 32),
                             ffn_hidden=2 * d_model, token_features="concat_xy",
                             **change.get("model", {}))
    stages = default_stages(scale, k_max=500, k_min=change.get("k_min", 5))
    return TrainConfig(model=model.to_dict(), stages=stages, n_components=128, seed=seed,
                       supervision=change.get("supervision", "measured"), checkpoint_every=10 ** 9)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="base,no_log_n,k_min_30")
    p.add_argument("--train-seeds", default="0,1")
    p.add_argument("--steps-scale", type=float, default=0.15, help="of the default stages (4,000 steps)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--k", default="10,30,100,300,1000")
    p.add_argument("--voxels", type=int, default=600, help="random voxels of the held-out person")
    p.add_argument("--runs", default="runs/ablations", help="folder for the trained models")
    p.add_argument("--out", default=str(HERE.parent / "braincorl_lite" / "checkpoints" / "recipe_ablations.csv"),
                   help="default: next to the shipped model, where chapter 2 reads it")
    args = p.parse_args(argv)

    import pandas as pd

    from braincorl_lite.baselines import fully_trained
    from braincorl_lite.datasets import load_dataset
    from braincorl_lite.evaluation import braincorl_method, evaluate_subject
    from braincorl_lite.checkpoint import load_checkpoint
    from braincorl_lite.training import train

    ks = [int(k) for k in args.k.split(",")]
    train_ds = load_dataset("simnsd", seed=0)
    train_subjects = [s for i, s in enumerate(train_ds) if i != 0]
    encoders = [fully_trained(s) for s in train_subjects]  # the measured prior, fitted once for all runs
    test = load_dataset("simnsd", seed=1)[0]
    test = test.select_voxels(np.sort(np.random.default_rng(0).choice(test.n_voxels, args.voxels, replace=False)))
    tables = []
    for variant in args.variants.split(","):
        for seed in [int(s) for s in args.train_seeds.split(",")]:
            cfg = make_config(variant, seed, args.steps_scale, args.d_model, args.layers)
            run = Path(args.runs) / f"{variant}_seed{seed}"
            model = train(train_subjects, run, cfg, device="cpu", progress=False, reference=encoders)
            seconds = load_checkpoint(run / "model.safetensors")[1]["train_seconds"]  # also for a reused run
            t = evaluate_subject(test, ks, {"braincorl": braincorl_method(model)}, n_draws=1, seed=0)
            t = t[t.roi == "all"].assign(variant=variant, train_seed=seed, train_seconds=seconds)
            tables.append(t)
            print(f"{variant} seed {seed}: trained in {seconds:.0f} s; EV "
                  + ", ".join(f"K={r.k}: {r.ev:.4f}" for r in t.itertuples()), flush=True)
    table = pd.concat(tables)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    ev = table.pivot_table(index="k", columns="variant", values="ev", aggfunc="mean")
    print(f"\nSimNSD (simulated): mean EV of {args.voxels} voxels of a new person, mean over training seeds")
    print(ev.round(4).to_string())
    if "base" in ev:
        print("\ndifference from base (variant - base):")
        print(ev.drop(columns="base").sub(ev["base"], axis=0).round(4).to_string())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
