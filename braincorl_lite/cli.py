"""The ``braincorl-lite`` command line.

Run ``braincorl-lite --help`` for the list of commands and ``braincorl-lite COMMAND --help`` for
each one's options.
"""

from __future__ import annotations

import argparse
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
