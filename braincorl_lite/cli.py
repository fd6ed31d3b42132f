"""The ``braincorl-lite`` command line.

Run ``braincorl-lite --help`` for the list of commands and ``braincorl-lite COMMAND --help`` for
each one's options.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _cmd_simulate(args) -> int:
    import time

    import pandas as pd

    from .data import save_subject
    from .simulate import simulate_simb5k, simulate_simnsd

    sim = simulate_simnsd if args.dataset == "simnsd" else simulate_simb5k
    t0 = time.perf_counter()
    ds = sim(args.size, world_seed=args.world_seed, subject_seed=args.seed, progress=True)
    seconds = time.perf_counter() - t0
    print(f"{ds.name} (a simulation, not real fMRI data): size={args.size!r}, world seed {args.world_seed}, "
          f"subject seed {args.seed}; generated in {seconds:.1f} s")
    with pd.option_context("display.width", 120, "display.precision", 3):
        print(ds.summary().to_string(index=False))
    if args.out:
        out = Path(args.out)
        for s in ds:
            save_subject(s, out / f"{s.subject}.npz")
        print(f"saved {len(ds)} subjects to {out}/")
    if args.report:
        from .evaluation import simulation_report

        simulation_report(ds, heldout=args.heldout_subject, ks=_parse_ks(args.k), n_draws=args.draws,
                          out=args.report_out)
    return 0


def _load_dataset(name: str, size: str, world_seed: int, seed: int, progress: bool = True):
    from .simulate import simulate_simb5k, simulate_simnsd

    if name == "simnsd":
        return simulate_simnsd(size, world_seed=world_seed, subject_seed=seed, progress=progress)
    if name == "simb5k":
        return simulate_simb5k(size, world_seed=world_seed, subject_seed=seed, progress=progress)
    raise SystemExit(f"unknown dataset {name!r}: use simnsd or simb5k (real NSD: see 'prepare-nsd')")


def _cmd_train(args) -> int:
    import torch

    from .model import ModelConfig
    from .train import TrainConfig, default_stages, train

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = _load_dataset(args.dataset, args.size, args.world_seed, args.seed)
    held = _parse_subjects(args.heldout_subject, len(ds))
    train_subjects = [s for i, s in enumerate(ds) if i + 1 not in held]
    model_cfg = ModelConfig.lite(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                                 ffn_hidden=2 * args.d_model, token_features=args.tokens)

    def make_config(scale):
        stages = default_stages(scale, k_max=args.k_max)
        for st in stages:
            st.batch_voxels = args.batch_voxels
        return TrainConfig(model=model_cfg.to_dict(), stages=stages, loss=args.loss,
                           n_components=args.components or None, seed=args.train_seed)

    device = None if args.device == "auto" else args.device
    scale = args.steps_scale
    if args.time_budget:
        from .train import measure_step_time

        per_step = measure_step_time(train_subjects, make_config(1.0), device=device)
        scale = args.time_budget * 60 / per_step / sum(s.steps for s in make_config(1.0).stages)
        if os.environ.get("RANK", "0") == "0":
            print(f"measured {per_step * 1000:.0f} ms per step: scaling the stages by {scale:.2f} "
                  f"to fit {args.time_budget} min")
    config = make_config(scale)
    stages = config.stages
    meta = {"dataset": args.dataset, "size": args.size, "world_seed": args.world_seed, "subject_seed": args.seed,
            "heldout_subjects": sorted(held), "train_subjects": [s.subject for s in train_subjects],
            "command": "braincorl-lite " + " ".join(sys.argv[1:])}
    say = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)
    say(f"meta-training on {len(train_subjects)} {ds.name} subjects (simulated), holding out {sorted(held)}; "
        f"{sum(s.steps for s in stages)} steps; output: {args.out}")
    train(train_subjects, args.out, config, device=device, resume=not args.no_resume, extra_metadata=meta)
    say(f"saved {Path(args.out) / 'model.safetensors'}")
    return 0


def _parse_subjects(text, n):
    held = {int(t) for t in str(text).split(",") if t.strip()}
    if not held or min(held) < 1 or max(held) > n:
        raise SystemExit(f"--heldout-subject must name subjects between 1 and {n}, got {text!r}")
    return held


def _cmd_evaluate(args) -> int:
    import pandas as pd

    from .evaluation import evaluate_heldout
    from .model import load_checkpoint

    ckpt = args.checkpoint or shipped_checkpoint()
    model, meta = load_checkpoint(ckpt, device=None if args.device == "auto" else args.device)
    ds = _load_dataset(args.dataset, args.size, args.world_seed, args.seed)
    if args.dataset == meta.get("dataset") and args.seed == meta.get("subject_seed") \
            and args.heldout_subject not in meta.get("heldout_subjects", [args.heldout_subject]):
        print(f"warning: subject {args.heldout_subject} of subject seed {args.seed} was a TRAINING subject of "
              f"this checkpoint; use another --seed for truly new people", file=sys.stderr)
    table = evaluate_heldout(model, ds, args.heldout_subject, _parse_ks(args.k), n_draws=args.draws,
                             seed=args.eval_seed, anatomical=not args.no_anatomical)
    summary = table[table.roi == "all"].pivot_table(index="k", columns="method", values="ev")
    print(f"\nmean EV on the shared images of {ds[args.heldout_subject - 1].subject} "
          f"({ds.name}, a simulation; subject seed {args.seed}); checkpoint {ckpt}")
    with pd.option_context("display.width", 160):
        print(summary.round(4).to_string())
    _print_ratios(summary)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def _print_ratios(summary) -> None:
    """BraInCoRL against ridge and the oracle: EV ratios and images ridge needs to match it."""
    from .evaluation import images_to_match

    if "braincorl" not in summary:
        return
    curve = summary["ridge"].dropna()
    for k, ev in summary["braincorl"].dropna().items():
        parts = [f"K={k}: braincorl - ridge = {ev - summary.loc[k, 'ridge']:+.4f}"]
        if "oracle" in summary and summary.loc[k, "oracle"] > 0:
            parts.append(f"braincorl / oracle = {ev / summary.loc[k, 'oracle']:.2f}")
        need = images_to_match(curve.index, curve.values, ev)
        if need == float("inf"):
            parts.append(f"ridge does not reach it within K <= {int(curve.index.max())}")
        else:
            parts.append(f"ridge needs {need:.0f} images to match ({need / k:.1f}x)")
        print("  " + "; ".join(parts))


def shipped_checkpoint() -> Path:
    """Path of the meta-trained lite checkpoint that ships with the package."""
    return Path(__file__).resolve().parent / "checkpoints" / "simnsd_lite.safetensors"


def _parse_ks(text: str):
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise SystemExit(f"--k must be a comma-separated list of integers, got {text!r}")
    if not ks or min(ks) < 1:
        raise SystemExit("--k needs at least one support size >= 1")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="braincorl-lite",
        description="BraInCoRL-lite: in-context encoding models of higher visual cortex. "
                    "Simulate data, train and evaluate models, and prepare real NSD data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "simulate", help="generate SimNSD or SimB5K and print a summary",
        description="Generate a simulated NSD-like dataset (deterministic from its seeds), print a "
                    "per-subject summary, optionally save each subject to .npz and print the "
                    "calibration report (noise ceilings, EV of ridge / Bayes oracle / anatomical "
                    "average / fully trained encoders against the paper's NSD ridge curve).",
    )
    p.add_argument("--dataset", choices=["simnsd", "simb5k"], default="simnsd")
    p.add_argument("--size", choices=["default", "fast", "tiny"], default="default",
                   help="dataset size (default: the calibrated book size)")
    p.add_argument("--seed", type=int, default=0, help="subject seed: which people (default 0)")
    p.add_argument("--world-seed", type=int, default=0, help="world seed: which stimulus world (default 0)")
    p.add_argument("--out", help="folder to save one .npz per subject")
    p.add_argument("--report", action="store_true", help="also evaluate the baselines on a held-out subject")
    p.add_argument("--heldout-subject", type=int, default=1, help="1-based subject for --report (default 1)")
    p.add_argument("--k", default="10,30,100,300,1000", help="support sizes for --report")
    p.add_argument("--draws", type=int, default=2, help="support draws per K for --report")
    p.add_argument("--report-out", help="CSV file for the --report table")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "train", help="meta-train an in-context encoder on simulated subjects",
        description="Meta-train BraInCoRL-lite in three stages (pretrain on synthetic voxels from a "
                    "Gaussian fitted to the training voxels, context extension with K ~ U(5, k-max), "
                    "finetuning on the training subjects' voxels), holding out one or more subjects. "
                    "Checkpoints go to --out every few hundred steps; rerunning the same command "
                    "resumes an interrupted run. For data-parallel training start it with "
                    "'torchrun --standalone --nproc_per_node=N -m braincorl_lite.cli train ...' "
                    "(gloo on CPU, nccl on GPUs); --batch-voxels is the global batch.",
    )
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    p.add_argument("--dataset", choices=["simnsd", "simb5k"], default="simnsd")
    p.add_argument("--size", choices=["default", "fast", "tiny"], default="default")
    p.add_argument("--seed", type=int, default=0, help="subject seed of the training subjects")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--heldout-subject", default="1", help="1-based subject(s) left out, e.g. 1 or 1,2")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply the step counts of the three stages (1500, 1500, 1000)")
    p.add_argument("--time-budget", type=float, default=0,
                   help="minutes of training: measure the step time, then scale the stages to fit "
                        "(overrides --steps-scale)")
    p.add_argument("--batch-voxels", type=int, default=64, help="voxels (tasks) per step")
    p.add_argument("--k-max", type=int, default=500, help="largest support size seen in training")
    p.add_argument("--loss", choices=["population", "query"], default="population",
                   help="population: error against the true encoder over the image distribution "
                        "(needs ground truth); query: MSE on held-out query images, as published")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--tokens", choices=["xy", "concat_xy"], default="concat_xy",
                   help="token content: [x; beta] as published, or also x * beta")
    p.add_argument("--components", type=int, default=128,
                   help="PCA (whitened) basis size inside the model; 0 for raw features")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a run")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate", help="EV per K and ROI of a checkpoint and every baseline on a held-out subject",
        description="Evaluate a checkpoint on a held-out simulated subject: support images from its "
                    "unique images, EV on its shared images, for braincorl, ridge, the Bayes oracle, "
                    "the fully trained encoder and the anatomical average. Prints a table and writes "
                    "a CSV with columns method,k,roi,ev,n_voxels,draw (roi 'all' is the mean over all "
                    "voxels; fully_trained has k = number of unique images, anatomical k = 0).",
    )
    p.add_argument("--checkpoint", help="model .safetensors (default: the shipped SimNSD checkpoint)")
    p.add_argument("--dataset", choices=["simnsd", "simb5k"], default="simnsd")
    p.add_argument("--size", choices=["default", "fast", "tiny"], default="default")
    p.add_argument("--seed", type=int, default=1,
                   help="subject seed: 1 (default) gives people the shipped model never saw")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--heldout-subject", type=int, default=1, help="1-based subject to evaluate")
    p.add_argument("--k", default="10,30,100,300,1000", help="comma-separated support sizes")
    p.add_argument("--draws", type=int, default=2, help="random support sets per K")
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the support draws")
    p.add_argument("--no-anatomical", action="store_true", help="skip the anatomical average (faster)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="CSV output path")
    p.set_defaults(func=_cmd_evaluate)

    try:
        from . import cli_real
    except ImportError:  # pragma: no cover - the real-data commands are optional at import time
        cli_real = None
    if cli_real is not None:
        cli_real.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
