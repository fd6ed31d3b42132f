"""The ``braincorl-lite`` command line (``braincorl-lite --help``, ``braincorl-lite COMMAND --help``).

Every command checks its arguments before any expensive work. An error the user can fix (a
:class:`~braincorl_lite.errors.BraInCoRLError`) is one line ``braincorl-lite COMMAND: error: MESSAGE``
on stderr and exit status 1; a usage error exits with 2, Ctrl-C with 130. Any other exception is
a programming error and keeps its traceback.

Subjects are numbered from 1 here, as in NSD (``--heldout-subject 1`` is ``simnsd-01`` or
``subj01``); the Python API takes 0-based positions, converted at this boundary.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import BraInCoRLError, ConfigError

__all__ = ["main", "build_parser", "DEFAULT_KS"]

#: support sizes of ``evaluate`` and ``simulate --report`` when ``--k`` is not given (those larger
#: than the subject's unique images are left out, with a note)
DEFAULT_KS = (10, 30, 100, 300, 1000)

_SUBJECT_NUMBERS = "subjects are numbered from 1, as in NSD: 1 is simnsd-01 / simb5k-01 / subj01"
_DEVICE_HELP = "auto, cpu, cuda or cuda:N"


# ---------------------------------------------------------------------- argument checks
def _say(*args, **kwargs) -> None:
    """Print on rank 0 only (torchrun starts one process per rank)."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, **kwargs)


def _at_least(low, **flags) -> None:
    """``_at_least(1, draws=args.draws)``: each ``--flag`` must be at least ``low``."""
    for name, value in flags.items():
        if value is None or value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def _int_list(text, flag: str, what: str) -> list:
    """``"10,30"`` -> ``[10, 30]`` (duplicates dropped), each at least 1."""
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be a comma-separated list of {what}, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one value, got {text!r}")
    low = min(values)
    if low < 1:
        raise ConfigError(f"{flag} {low}: " + ("subjects are numbered from 1, as in NSD (1 is the first subject)"
                                               if flag == "--heldout-subject" else f"must be at least 1, got {low}"))
    return list(dict.fromkeys(values))


def _subjects(text) -> list:
    return _int_list(text, "--heldout-subject", "subject numbers (from 1, as in NSD), e.g. 1 or 1,2")


def _positions(layout, text) -> list:
    """0-based positions of the 1-based subject numbers of ``--heldout-subject``."""
    numbers = _subjects(text)
    try:
        return [layout.position(n) for n in numbers]
    except ConfigError as err:
        raise ConfigError(f"--heldout-subject {text}: {err}") from None


def _fit_ks(text, pool: int, who: str):
    """Support sizes of ``--k`` that fit ``pool`` unique images; without ``--k`` the default list adapts."""
    if text is not None:
        ks = _int_list(text, "--k", "integers (support sizes)")
        too_big = [k for k in ks if k > pool]
        if too_big:
            raise ConfigError(f"--k {','.join(map(str, too_big))}: {who} has only {pool} unique (support) images; "
                              f"use support sizes up to {pool}")
        return ks
    ks, dropped = [k for k in DEFAULT_KS if k <= pool], [k for k in DEFAULT_KS if k > pool]
    if not ks:
        raise ConfigError(f"{who} has only {pool} unique (support) images, fewer than every default support "
                          f"size ({','.join(map(str, DEFAULT_KS))}): give --k")
    if dropped:
        _say(f"note: support sizes K = {','.join(map(str, ks))} (default K = {','.join(map(str, dropped))} "
             f"left out: {who} has only {pool} unique images)")
    return ks


def _device(text):
    from ._device import resolve_device

    try:
        return resolve_device(text)
    except ConfigError as err:
        raise ConfigError(f"--{err}") from None


def _check_folder(path, flag: str, shown=None) -> None:
    """A folder that exists and is writable, or that can be created (``shown``: the path named in errors)."""
    p, shown = Path(path).expanduser(), path if shown is None else shown
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{flag} {shown}: " + ("exists and is not a folder" if shown == path
                                                      else f"cannot write it, {path} is a file"))
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {shown}: the folder {path} is not writable")
        return
    parent = next(q for q in p.parents if q.exists())  # the nearest ancestor that exists
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is not writable" if parent.is_dir() else "is a file"
        raise ConfigError(f"{flag} {shown}: cannot create it, {parent} {why}")


def _check_file(path, flag: str) -> None:
    """A file path that can be written (its folder exists or can be created)."""
    p = Path(path).expanduser()
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        raise ConfigError(f"{flag} {path}: is a folder; give a file name, e.g. {Path(path) / 'results.csv'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{flag} {path}: the file is not writable")
    _check_folder(p.parent, flag, shown=path)


def _layout(args, subjects=None):
    from .datasets import dataset_layout

    return dataset_layout(args.dataset, size=args.size, subjects=subjects, data_dir=getattr(args, "data", None))


def _load(args, subjects=None):
    from .datasets import load_dataset

    return load_dataset(args.dataset, size=args.size, seed=args.seed, world_seed=args.world_seed,
                        subjects=subjects, data_dir=getattr(args, "data", None), progress=True)


# ---------------------------------------------------------------------- simulate
def _cmd_simulate(args) -> int:
    import time

    import pandas as pd

    from .data import save_subject

    if args.out:
        _check_folder(args.out, "--out")
    if args.report:
        _at_least(1, draws=args.draws)
        if args.report_out:
            _check_file(args.report_out, "--report-out")
        layout = _layout(args)
        (heldout,) = _positions(layout, args.heldout_subject)
        ks = _fit_ks(args.k, layout.n_unique[heldout], f"{layout.label} subject {args.heldout_subject}")
    t0 = time.perf_counter()
    ds = _load(args)
    print(f"{ds.name} (a simulation, not real fMRI data): size={args.size!r}, world seed {ds.world_seed}, "
          f"subject seed {ds.subject_seed}; generated in {time.perf_counter() - t0:.1f} s")
    with pd.option_context("display.width", 120, "display.precision", 3):
        print(ds.summary().to_string(index=False))
    if args.out:
        for s in ds:
            save_subject(s, Path(args.out) / f"{s.subject}.npz")
        print(f"saved {len(ds)} subjects to {args.out}/")
    if args.report:
        from .evaluation import simulation_report

        simulation_report(ds, heldout=heldout, ks=ks, n_draws=args.draws, out=args.report_out)
    return 0


# ---------------------------------------------------------------------- train
def _cmd_train(args) -> int:
    import torch

    from .model import ModelConfig
    from .training import TrainConfig, check_image_pools, default_stages, train

    # ---- arguments (nothing expensive before they all pass)
    if not args.steps_scale > 0:
        raise ConfigError(f"--steps-scale must be positive, got {args.steps_scale}")
    _at_least(0, time_budget=args.time_budget, components=args.components, threads=args.threads)
    _at_least(1, batch_voxels=args.batch_voxels, k_max=args.k_max, k_min=args.k_min, d_model=args.d_model,
              layers=args.layers, heads=args.heads)
    if args.k_min > args.k_max:
        raise ConfigError(f"--k-min {args.k_min} is larger than --k-max {args.k_max}")
    if args.dataset == "nsd" and args.supervision == "truth":
        raise ConfigError("--supervision truth needs the simulation's ground truth; real NSD data can only be "
                          "trained with --supervision measured")
    device = _device(args.device)
    _check_folder(args.out, "--out")
    layout = _layout(args)
    held = _positions(layout, args.heldout_subject)
    train_pos = [i for i in range(len(layout.numbers)) if i not in held]
    if not train_pos:
        raise ConfigError(f"--heldout-subject {args.heldout_subject} leaves no training subject "
                          f"({layout.label} subjects: {', '.join(map(str, layout.numbers))})")
    try:
        model_cfg = ModelConfig.lite(n_features=layout.n_features, d_model=args.d_model, n_layers=args.layers,
                                     n_heads=args.heads, ffn_hidden=2 * args.d_model, token_features=args.tokens)
        ModelConfig.from_dict({**model_cfg.to_dict(), "n_components": args.components or None})
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None

    def make_config(scale):
        stages = default_stages(scale, k_max=args.k_max, k_min=args.k_min)
        for st in stages:
            st.batch_voxels = args.batch_voxels
        return TrainConfig(model=model_cfg.to_dict(), stages=stages, loss=args.loss, supervision=args.supervision,
                           n_components=args.components or None, seed=args.train_seed)

    check_image_pools(make_config(1.0), [layout.n_unique[i] for i in train_pos], k_max_name="--k-max")

    # ---- data and training
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = _load(args, subjects=None if layout.simulated else [layout.numbers[i] for i in train_pos])  # NSD: those only
    train_subjects = [ds[i] for i in train_pos] if layout.simulated else list(ds)
    scale, resuming = args.steps_scale, not args.no_resume and (Path(args.out) / "checkpoint.pt").exists()
    if args.time_budget and resuming:  # the run keeps the step scale it measured when it started
        _say(f"{args.out} holds a run: resuming it with its own recipe (--time-budget is not measured again)")
    elif args.time_budget:
        from .training import measure_step_time

        per_step = measure_step_time(train_subjects, make_config(1.0), device=device)
        scale = args.time_budget * 60 / per_step / sum(s.steps for s in make_config(1.0).stages)
        _say(f"measured {per_step * 1000:.0f} ms per step: scaling the stages by {scale:.2f} "
             f"to fit {args.time_budget} min")
    config = make_config(scale)
    held_numbers = sorted(layout.numbers[i] for i in held)
    meta = {"dataset": args.dataset, "size": args.size if layout.simulated else None,
            "world_seed": getattr(ds, "world_seed", None), "subject_seed": getattr(ds, "subject_seed", None),
            "seed": args.seed if layout.simulated else None, "heldout_subjects": held_numbers,
            "train_subjects": [s.subject for s in train_subjects], "supervision": args.supervision,
            "command": "braincorl-lite " + " ".join(sys.argv[1:])}
    _say(f"meta-training on {len(train_subjects)} {ds.name} subjects ({'simulated' if layout.simulated else 'real'}; "
         f"{', '.join(s.subject for s in train_subjects)}), holding out subject(s) {held_numbers}; "
         f"supervision {args.supervision}; {sum(s.steps for s in config.stages)} steps; output: {args.out}")
    train(train_subjects, args.out, None if resuming and args.time_budget else config, device=device,
          resume=not args.no_resume, extra_metadata=meta)
    _say(f"model: {Path(args.out) / 'model.safetensors'}")
    return 0


# ---------------------------------------------------------------------- evaluate
def _cmd_evaluate(args) -> int:
    import pandas as pd

    from .checkpoint import load_checkpoint, pretrained_path
    from .evaluation import evaluate_heldout

    # ---- arguments
    _at_least(1, draws=args.draws)
    device = _device(args.device)
    if args.out:
        _check_file(args.out, "--out")
    ckpt = Path(args.checkpoint).expanduser() if args.checkpoint else pretrained_path()
    if not ckpt.is_file():
        raise ConfigError(f"--checkpoint {ckpt}: " + ("is a folder; give its model.safetensors" if ckpt.is_dir()
                                                        else "no such file"))
    real = args.dataset == "nsd"
    (number,) = _subjects(args.heldout_subject)
    layout = _layout(args, subjects=[number] if real else None)  # NSD: only this subject is read
    (pos,) = _positions(layout, number)
    ks = _fit_ks(args.k, layout.n_unique[pos], f"{layout.label} subject {number}")
    model, meta = load_checkpoint(ckpt, device=device)
    if model.config.n_features != layout.n_features:
        raise ConfigError(f"--checkpoint {ckpt} reads {model.config.n_features}-d image features but "
                          f"{layout.label} has {layout.n_features}-d ones: use a model trained on these features")

    # ---- data and evaluation
    ds = _load(args, subjects=[number] if real else None)
    subj = ds[pos]
    same_people = meta.get("dataset") == args.dataset and (
        real or (meta.get("world_seed") == ds.world_seed and meta.get("subject_seed") == ds.subject_seed))
    if same_people and subj.subject in meta.get("train_subjects", []):
        print(f"warning: {subj.subject} was a TRAINING subject of this checkpoint"
              + ("" if real else f" (subject seed {ds.subject_seed}); use another --seed for new people"),
              file=sys.stderr)
    oracle, anatomical = subj.truth is not None, not args.no_anatomical and len(ds) > 1 and (subj.vertex >= 0).all()
    if not oracle:
        print(f"note: oracle: skipped ({ds.name} is real data without ground truth; the Bayes oracle needs a simulation)")
    if not args.no_anatomical and not anatomical:
        print("note: anatomical: skipped (" + ("its voxels are volumetric, without surface vertices to align subjects"
                                              if (subj.vertex < 0).any() else "it needs other subjects") + ")")
    table = evaluate_heldout(model, ds, pos, ks, n_draws=args.draws, seed=args.eval_seed,
                             anatomical=bool(anatomical), oracle=oracle)
    if "subject" not in table.columns:
        table.insert(0, "subject", subj.subject)
    summary = table[table.roi == "all"].pivot_table(index="k", columns="method", values="ev")
    where = (f"{ds.name}, a simulation; world seed {ds.world_seed}, subject seed {ds.subject_seed}"
             if getattr(ds, "world", None) is not None else f"{ds.name}, real data")
    print(f"\nmean EV on the {int(subj.shared_mask.sum())} shared images of {subj.subject} ({where}); checkpoint {ckpt}")
    with pd.option_context("display.width", 160):
        print(summary.round(4).to_string())
    _print_ratios(summary)
    if args.out:
        out = Path(args.out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        print(f"wrote {args.out}")
    return 0


def _print_ratios(summary) -> None:
    """BraInCoRL against ridge and the oracle: EV ratios and images ridge needs to match it."""
    from .evaluation import images_to_match

    if "braincorl" not in summary or "ridge" not in summary:
        return
    curve = summary["ridge"].dropna()
    for k, ev in summary["braincorl"].dropna().items():
        parts = [f"K={k}: braincorl - ridge = {ev - summary.loc[k, 'ridge']:+.4f}"]
        if "oracle" in summary and summary.loc[k, "oracle"] > 0:
            parts.append(f"braincorl / oracle = {ev / summary.loc[k, 'oracle']:.2f}")
        need = images_to_match(curve.index, curve.values, ev)
        parts.append(f"ridge does not reach it within K <= {int(curve.index.max())}" if need == float("inf")
                     else f"ridge needs {need:.0f} images to match ({need / k:.1f}x)")
        print("  " + "; ".join(parts))


# ---------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``braincorl-lite COMMAND: error: MESSAGE``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _data_args(p, seed: int, seed_help: str, sims_only: bool = False) -> None:
    """--dataset, --size, --data (unless ``sims_only``), --seed and --world-seed."""
    p.add_argument("--dataset", choices=["simnsd", "simb5k"] + ([] if sims_only else ["nsd"]), default="simnsd",
                   help="simnsd (default) or simb5k: simulations generated on the fly"
                        + ("" if sims_only else "; nsd: real subjects prepared with prepare-nsd (see --data)"))
    p.add_argument("--size", choices=["default", "fast", "tiny"], default="default",
                   help="size of a simulation (default: the calibrated book size; ignored for nsd)")
    if not sims_only:
        p.add_argument("--data", metavar="DIR", help="nsd only: data root holding prepared/subjNN.npz (default: "
                                                     "$BRAINCORL_DATA, else ~/.cache/braincorl_lite)")
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument("--world-seed", type=int, default=0, help="world seed of a simulation: which stimulus world "
                                                             "(default 0)")


def _k_args(p, what: str = "") -> None:
    """--k and --draws of evaluate and simulate --report."""
    p.add_argument("--k", default=None, help=f"comma-separated support sizes{what} (default: "
                   f"{','.join(map(str, DEFAULT_KS))}, without those larger than the subject's unique images)")
    p.add_argument("--draws", type=int, default=2, help=f"random support sets per K{what} (at least 1)")


def _subject_arg(p, what: str, **kw) -> None:
    p.add_argument("--heldout-subject", help=f"{what}, numbered from 1 as in NSD (default 1; with --dataset nsd, "
                                             "1 is subj01)", **{"type": int, "default": 1, **kw})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="braincorl-lite",
                     description="BraInCoRL-lite: in-context encoding models of higher visual cortex. Simulate "
                                 "data, train and evaluate models, and prepare real NSD data. On the command "
                                 f"line {_SUBJECT_NUMBERS}.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("simulate", help="generate SimNSD or SimB5K and print a summary", description=(
        "Generate a simulated NSD-like dataset (deterministic from its seeds, the same people as load_dataset("
        "dataset, size, seed)), print a per-subject summary, optionally save each subject to .npz and print the "
        "calibration report (noise ceilings, EV of ridge / Bayes oracle / anatomical average / fully trained "
        f"encoders against the paper's NSD ridge curve); {_SUBJECT_NUMBERS}."))
    _data_args(p, 0, "subject seed: which people (default 0; SimB5K adds 5000, as load_dataset does)", sims_only=True)
    p.add_argument("--out", help="folder to save one .npz per subject")
    p.add_argument("--report", action="store_true", help="also evaluate the baselines on a held-out subject")
    _subject_arg(p, "subject for --report")
    _k_args(p, " for --report")
    p.add_argument("--report-out", help="CSV file for the --report table")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("train", help="meta-train an in-context encoder on simulated or prepared NSD subjects",
                       description=(
        "Meta-train BraInCoRL-lite in three stages (pretrain on synthetic voxels from a Gaussian fitted to the "
        "training voxels, context extension with K ~ U(k-min, k-max), finetuning on the training subjects' voxels), "
        f"holding out one or more subjects ({_SUBJECT_NUMBERS}). Rerunning the same command resumes an interrupted "
        "run. Data-parallel: 'torchrun --standalone --nproc_per_node=N -m braincorl_lite.cli train ...' (gloo on "
        "CPU, nccl on GPUs; --batch-voxels is the global batch)."))
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    _data_args(p, 0, "subject seed of simulated training subjects (default 0)")
    _subject_arg(p, "subject(s) left out, e.g. 1 or 1,2", type=str, default="1")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply the step counts of the three stages (1500, 1500, 1000); must be positive")
    p.add_argument("--time-budget", type=float, default=0, help="minutes of training: measure the step time, then "
                   "scale the stages to fit (overrides --steps-scale; 0, the default, is off)")
    p.add_argument("--batch-voxels", type=int, default=64, help="voxels (tasks) per step")
    p.add_argument("--k-max", type=int, default=500, help="largest support size seen in training (with stage 3's "
                   "query images it must fit each training subject's unique images)")
    p.add_argument("--k-min", type=int, default=5,
                   help="smallest support size of stages 2 and 3 (stage 1 draws K ~ U(30, k-max))")
    p.add_argument("--supervision", choices=["measured", "truth"], default="measured", help="measured (default): "
                   "learn only from measured responses, noise ceilings and encoders fitted to them; truth: the "
                   "simulation's true weights (an ablation; simulations only). Recorded in the checkpoint metadata")
    p.add_argument("--loss", choices=["population", "query"], default="population", help="loss of the synthetic "
                   "stages 1-2: population (error against the synthetic voxel's known encoder over the image "
                   "distribution) or query (MSE on held-out query images, as published); stage 3 on measured voxels "
                   "always uses the query loss")
    for flag, default in (("--d-model", 128), ("--layers", 4), ("--heads", 4), ("--train-seed", 0)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--tokens", choices=["xy", "concat_xy"], default="concat_xy",
                   help="token content: [x; beta] as published, or also x * beta")
    p.add_argument("--components", type=int, default=128, help="PCA (whitened) basis size inside the model; 0 for "
                   "raw features")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a run")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="EV per K and ROI of a checkpoint and every baseline on a held-out subject",
                       description=(
        "Evaluate a checkpoint on a held-out subject: support images from its unique images, EV on its shared "
        "images, for braincorl, ridge, the Bayes oracle, the fully trained encoder and the anatomical average (real "
        "NSD has no ground truth: the oracle is skipped, and so is the anatomical average of volumetric voxels). "
        "Prints a table and writes a CSV with columns subject,method,k,roi,ev,n_voxels,draw (roi 'all' is the mean "
        "over all voxels; fully_trained has k = number of unique images, anatomical k = 0). "
        f"{_SUBJECT_NUMBERS[0].upper() + _SUBJECT_NUMBERS[1:]}."))
    p.add_argument("--checkpoint", help="model .safetensors (default: the shipped SimNSD checkpoint)")
    _data_args(p, 1, "subject seed of a simulation: 1 (default) gives people the shipped model never saw")
    _subject_arg(p, "subject to evaluate")
    _k_args(p)
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the support draws")
    p.add_argument("--no-anatomical", action="store_true", help="skip the anatomical average (faster)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--out", help="CSV output path")
    p.set_defaults(func=_cmd_evaluate)

    from .nsd.cli import register  # fetch, prepare-nsd, extract-features

    register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return " ".join(str(msg).split())


def main(argv=None) -> int:
    """Run one command; returns its exit status (0 success, 1 error, 2 usage error, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except BraInCoRLError as exc:
        print(f"braincorl-lite {args.command}: error: {_one_line(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # training says whether it saved the run; otherwise a plain line
        hint = "; rerun the same command to resume the run" if args.command == "train" else ""
        print(f"braincorl-lite {args.command}: {_one_line(exc) or 'interrupted' + hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
