"""Command-line sub-commands of the real-data path: ``fetch``, ``prepare-nsd``, ``extract-features``.

:func:`register` adds them to the ``braincorl-lite`` parser built in :mod:`braincorl_lite.cli`.
Each sub-command stores its handler with ``set_defaults(func=...)``; a handler takes the parsed
``argparse.Namespace`` and returns an exit code (0 success, 1 error; the error is printed as one
clear message, without a traceback).

Typical session (after accepting the NSD data-use terms)::

    braincorl-lite fetch nsd --subject 1 --dry-run           # what would be downloaded, sizes
    braincorl-lite fetch nsd --subject 1                      # design, ROIs, betas of the public sessions
    braincorl-lite fetch nsd --what stimuli                   # nsd_stimuli.hdf5 (~37 GiB)
    braincorl-lite fetch clip --model ViT-B-32 --pretrained openai
    braincorl-lite fetch forget-pin nsd.betas_session --subject 1 --session 3   # after an upstream change
    braincorl-lite extract-features --source nsd-hdf5 --subject 1 --out subj01_clip.h5
    braincorl-lite prepare-nsd --subject 1 --features subj01_clip.h5 --out subj01.npz
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path

__all__ = ["register"]

_NSD_GROUPS = ("design", "stimuli", "betas", "rois", "ncsnr")


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _cache_env(cache_dir):
    """Temporarily point ``$BRAINCORL_DATA`` at ``cache_dir`` (when given)."""
    from . import fetch

    if not cache_dir:
        yield
        return
    old = os.environ.get(fetch.ENV_CACHE)
    os.environ[fetch.ENV_CACHE] = str(Path(cache_dir).expanduser())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(fetch.ENV_CACHE, None)
        else:
            os.environ[fetch.ENV_CACHE] = old


def _handler(fn):
    """Wrap a command: run it with the cache override and turn known errors into exit code 1."""

    @functools.wraps(fn)
    def run(args) -> int:
        from .errors import BraInCoRLError

        try:
            with _cache_env(getattr(args, "cache_dir", None)):
                code = fn(args)
            return 0 if code is None else int(code)
        except (BraInCoRLError, FileNotFoundError, FileExistsError, ValueError,
                KeyError, RuntimeError, OSError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            print(f"braincorl-lite {getattr(args, '_real_command', '')}: error: {msg}", file=sys.stderr)
            return 1

    return run


def _add_common_fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="only list the files (present or missing, size, URL); download nothing")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache directory (default: $BRAINCORL_DATA, else ~/.cache/braincorl_lite)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="extra attempts after a failed download (default: 3)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def _what_list(text: str) -> list:
    items = [w.strip().lower() for w in text.split(",") if w.strip()]
    bad = [w for w in items if w not in _NSD_GROUPS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(_NSD_GROUPS)} (comma-separated), got {text!r}")
    return items


# ---------------------------------------------------------------------- fetch
@_handler
def _cmd_fetch_nsd(args) -> int:
    from . import fetch
    from .nsd import parse_sessions

    what = args.what
    needs_subject = {"betas", "rois", "ncsnr"} & set(what)
    if needs_subject and args.subject is None:
        raise ValueError(f"--subject is required to fetch {', '.join(sorted(needs_subject))}")
    sessions = parse_sessions(args.sessions, args.subject) if "betas" in what else []
    entries = fetch.nsd_entries(args.subject or 1, sessions, what=what, include_optional=not args.no_optional)
    if args.dry_run:
        print(fetch.describe(entries))
        return 0
    if "stimuli" in what:
        print("note: nsd_stimuli.hdf5 is about 37 GiB", file=sys.stderr)
    print("NSD files are covered by the NSD Terms and Conditions and the data access agreement "
          "(https://naturalscenesdataset.org/); fetching them means you have accepted those terms.",
          file=sys.stderr)
    paths = fetch.fetch_entries(entries, retries=args.retries, progressbar=not args.no_progress)
    for p in paths:
        print(p)
    print(f"{len(paths)} file(s) in {fetch.cache_dir() / 'nsd'}", file=sys.stderr)
    return 0


@_handler
def _cmd_fetch_clip(args) -> int:
    from . import fetch

    entry = fetch.clip_entry(args.model, args.pretrained)
    if args.dry_run:
        print(fetch.describe([entry]))
        return 0
    path = fetch.locate(entry, download=True, retries=args.retries, progressbar=not args.no_progress)
    print(path)
    return 0


@_handler
def _cmd_fetch_forget_pin(args) -> int:
    from . import fetch
    from .errors import ConfigError

    manifests = fetch.load_manifests()
    if args.name not in manifests:
        raise ConfigError(f"no manifest entry named {args.name!r}; `braincorl-lite fetch list` shows them")
    template = manifests[args.name]
    given = {k: v for k, v in (("subject", args.subject), ("session", args.session)) if v is not None}
    missing = sorted(set(template.placeholders) - set(given))
    if missing:
        raise ConfigError(f"{args.name} needs {', '.join('--' + m for m in missing)}")
    try:
        entry = template.expand(**given)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if fetch.forget_pin(entry):
        print(f"forgot the pin of {entry.label} in {fetch.cache_dir() / fetch.PINS_FILE}; "
              f"the next `{fetch.fetch_command(entry)}` pins the new file")
    else:
        print(f"{entry.label} has no pin in {fetch.cache_dir() / fetch.PINS_FILE}; nothing to do", file=sys.stderr)
    return 0


@_handler
def _cmd_fetch_list(args) -> int:
    from . import fetch

    for name, e in sorted(fetch.load_manifests().items()):
        size = f"{e.size_bytes / 1e6:.1f} MB" if e.size_bytes else (e.size_note or "size unknown")
        params = f" [{', '.join(e.placeholders)}]" if e.placeholders else ""
        print(f"{name}{params}  ({e.group}{', optional' if e.optional else ''}; {size})\n    {e.url}")
    return 0


def _register_fetch(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch", help="download NSD files or CLIP weights into the cache (explicit, hash-checked)",
        description="Download external files listed in data_manifests/ into the cache directory "
                    "($BRAINCORL_DATA or ~/.cache/braincorl_lite). Files already present are checked, not "
                    "downloaded again; interrupted transfers resume. Nothing else in braincorl-lite downloads.",
    )
    sub = p.add_subparsers(dest="fetch_target", metavar="{nsd,clip,list,forget-pin}")
    sub.required = True

    n = sub.add_parser(
        "nsd", help="NSD design, ROIs, betas, ncsnr or stimuli of one subject",
        description="Fetch Natural Scenes Dataset files (needs the NSD data-use agreement, "
                    "https://naturalscenesdataset.org/). Betas are about 1 GB per session.",
    )
    n.add_argument("--subject", type=int, choices=range(1, 9), metavar="{1..8}",
                   help="NSD subject (required for betas, rois and ncsnr)")
    n.add_argument("--sessions", default="public", metavar="SPEC",
                   help="sessions whose betas to fetch: 'public' (default: all but the last three held-out "
                        "sessions), 'all', '1-40', '1,3,5-7'")
    n.add_argument("--what", type=_what_list, default=["design", "rois", "betas"], metavar="LIST",
                   help="comma-separated groups among design, stimuli, betas, rois, ncsnr "
                        "(default: design,rois,betas; stimuli is ~37 GiB and must be asked for)")
    n.add_argument("--no-optional", action="store_true",
                   help="skip optional files (label tables, stimulus info)")
    _add_common_fetch_args(n)
    n.set_defaults(func=_cmd_fetch_nsd, _real_command="fetch nsd")

    c = sub.add_parser("clip", help="CLIP weights for open_clip",
                       description="Fetch a CLIP checkpoint listed in data_manifests/clip.yaml.")
    c.add_argument("--model", default="ViT-B-32", help="open_clip model name (default: ViT-B-32)")
    c.add_argument("--pretrained", default="openai",
                   help="weights tag: openai (default, the paper's encoder) or laion2b_s34b_b79k")
    _add_common_fetch_args(c)
    c.set_defaults(func=_cmd_fetch_clip, _real_command="fetch clip")

    fp = sub.add_parser(
        "forget-pin", help="forget the recorded sha256 of a file that changed upstream on purpose",
        description="Files without a sha256 in data_manifests/ are pinned on first download (their sha256 is "
                    "recorded in <cache>/pins.json). When such a file changed upstream on purpose, forget its "
                    "pin, delete the old copy, and fetch it again: the new file is pinned.",
    )
    fp.add_argument("name", help="manifest entry name, e.g. nsd.betas_session (see `braincorl-lite fetch list`)")
    fp.add_argument("--subject", type=int, metavar="N", help="subject of a per-subject entry")
    fp.add_argument("--session", type=int, metavar="N", help="session of a per-session entry")
    fp.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $BRAINCORL_DATA)")
    fp.set_defaults(func=_cmd_fetch_forget_pin, _real_command="fetch forget-pin")

    lst = sub.add_parser("list", help="list every manifest entry")
    lst.add_argument("--cache-dir", metavar="DIR", help=argparse.SUPPRESS)
    lst.set_defaults(func=_cmd_fetch_list, _real_command="fetch list")


# ---------------------------------------------------------------------- prepare-nsd
@_handler
def _cmd_prepare(args) -> int:
    from .nsd import prepare_subject

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    data = prepare_subject(
        args.subject, args.features, out, nsd_root=args.nsd_root, sessions=args.sessions,
        min_repeats=args.min_repeats, ncsnr=args.ncsnr, verify=not args.no_verify,
        use_stim_info=not args.no_stim_info, progress=not args.no_progress, voxels=args.voxels,
    )
    print(repr(data))
    vs = data.meta["voxel_set"]
    print(f"voxels: {vs['name']} ({vs['definition']}), {vs['n_voxels']} of {data.meta['n_voxels_nsdgeneral']} "
          "nsdgeneral voxels", file=sys.stderr)
    dropped = data.meta.get("n_voxels_dropped_nan", 0)
    if dropped:
        print(f"dropped {dropped} voxel(s) with NaN values", file=sys.stderr)
    print(f"saved {out}")
    return 0


def _register_prepare(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare-nsd", help="build the subject container of one real NSD subject",
        description="Read one NSD subject's design, session betas (HDF5) and ROI volumes from the cache "
                    "(or --nsd-root), z-score per session, average repeats, restrict to nsdgeneral (or its "
                    "fLoc ROIs with --voxels higher-visual), label "
                    "fLoc ROIs, compute the noise ceiling, attach image features, and save a SubjectData "
                    "file usable by every notebook with dataset='nsd'. Streams one session at a time.",
    )
    p.add_argument("--subject", type=int, required=True, choices=range(1, 9), metavar="{1..8}",
                   help="NSD subject (the paper uses 1, 2, 5, 7)")
    p.add_argument("--features", required=True, metavar="PATH",
                   help="features file from extract-features (must cover the subject's images)")
    p.add_argument("--out", required=True, metavar="PATH", help="output container (.npz)")
    p.add_argument("--sessions", default="public", metavar="SPEC",
                   help="sessions to use: 'public' (default), 'all', '1-37', '1,3,5-7'")
    p.add_argument("--nsd-root", metavar="DIR",
                   help="an existing local NSD copy with the bucket layout (default: the cache)")
    p.add_argument("--min-repeats", type=int, default=1, choices=(1, 2, 3),
                   help="keep images shown at least this many times in the sessions used (default: 1)")
    p.add_argument("--ncsnr", default="computed", choices=("computed", "nsd"),
                   help="noise-ceiling SNR computed from the sessions used (default) or NSD's ncsnr.nii.gz")
    p.add_argument("--voxels", default="nsdgeneral", choices=("nsdgeneral", "higher-visual"),
                   help="nsdgeneral (default): every voxel of NSD's nsdgeneral visual-cortex mask; higher-visual: "
                        "only the nsdgeneral voxels inside NSD's fLoc ROIs (floc-faces, floc-bodies, floc-places, "
                        "floc-words), closer to the paper's higher visual cortex (the official code does not "
                        "publish its mask). The choice is recorded in meta['voxel_set']")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 checks of the input files")
    p.add_argument("--no-stim-info", action="store_true",
                   help="ignore nsd_stim_info_merged.csv even when it is available")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $BRAINCORL_DATA)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    p.set_defaults(func=_cmd_prepare, _real_command="prepare-nsd")


# ---------------------------------------------------------------------- extract-features
@_handler
def _cmd_extract(args) -> int:
    from . import fetch
    from .errors import ConfigError
    from .features import extract_folder_features, extract_nsd_features, load_clip, subject_image_ids

    if args.weights and args.pretrained in ("none", "") and args.quick_gelu is None:
        raise ConfigError(
            f"--weights {args.weights} with --pretrained none: say whether the checkpoint needs QuickGELU "
            "activations (--quick-gelu for OpenAI CLIP weights, --no-quick-gelu otherwise), or label it with a "
            "--pretrained tag from data_manifests/clip.yaml, which knows"
        )
    encoder = load_clip(args.model, args.pretrained, weights=args.weights, device=args.device,
                        quick_gelu=args.quick_gelu)
    common = dict(encoder=encoder, batch_size=args.batch_size, chunk_size=args.chunk_size,
                  max_chunks=args.max_chunks, overwrite=args.overwrite, progress=not args.no_progress)
    if args.images_dir is not None:
        if args.subject is not None:
            raise ValueError("--subject only applies to --source nsd-hdf5")
        result = extract_folder_features(args.images_dir, args.out, recursive=args.recursive, **common)
    else:
        kind, *rest = args.source
        if kind != "nsd-hdf5" or len(rest) > 1:
            raise ValueError("use --source nsd-hdf5 [PATH] (PATH defaults to the cached nsd_stimuli.hdf5)")
        stimuli = Path(rest[0]) if rest else fetch.locate("nsd.stimuli", verify=not args.no_verify)
        ids = None
        if args.subject is not None:
            design = Path(args.design) if args.design else fetch.locate("nsd.expdesign", verify=not args.no_verify)
            ids = subject_image_ids(design, args.subject)
        result = extract_nsd_features(stimuli, args.out, image_ids=ids, **common)
    if result is None:
        print(f"stopped after --max-chunks {args.max_chunks}; run the same command again to continue")
    else:
        print(f"saved {result} ({encoder.name}, {encoder.pretrained}, {encoder.embed_dim}-d, device {encoder.device})")
    return 0


def _register_extract(subparsers) -> None:
    p = subparsers.add_parser(
        "extract-features", help="compute unit-norm CLIP image embeddings (NSD stimuli or a folder)",
        description="Embed images with an open_clip model whose weights come from the cache "
                    "(braincorl-lite fetch clip ...). Batched, CPU or CUDA, L2-normalised, written to an "
                    "HDF5 file with the model and tag recorded. Work is saved chunk by chunk in "
                    "<out>.partial; rerunning the same command resumes it.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", nargs="+", metavar=("nsd-hdf5", "PATH"),
                     help="NSD stimuli: 'nsd-hdf5' and optionally the path of nsd_stimuli.hdf5 "
                          "(default: the cached copy)")
    src.add_argument("--images-dir", metavar="DIR", help="a folder of images (jpg, png, ...)")
    p.add_argument("--out", required=True, metavar="PATH", help="features file to write (.h5)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name (default: ViT-B-32)")
    p.add_argument("--pretrained", default="openai",
                   help="weights tag from data_manifests/clip.yaml (default: openai); 'none' = random weights")
    p.add_argument("--weights", metavar="FILE",
                   help="use this checkpoint file instead of the cached one; its architecture settings "
                        "(QuickGELU, preprocessing) come from the --pretrained tag's manifest entry")
    p.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="QuickGELU activations (OpenAI weights) or not; only needed with --weights and a tag the "
                        "manifest does not know (or --pretrained none); a value contradicting the manifest is refused")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default: 64)")
    p.add_argument("--chunk-size", type=int, default=1024, metavar="N",
                   help="images per saved chunk, the unit of resuming (default: 1024)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--subject", type=int, choices=range(1, 9), metavar="{1..8}",
                   help="NSD only: embed just this subject's 10,000 images")
    p.add_argument("--design", metavar="PATH", help="nsd_expdesign.mat for --subject (default: the cached copy)")
    p.add_argument("--recursive", action="store_true", help="with --images-dir, include sub-folders")
    p.add_argument("--max-chunks", type=int, metavar="N", help="stop after N new chunks (rerun to continue)")
    p.add_argument("--overwrite", action="store_true", help="discard existing output made with other settings")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 checks of cached inputs")
    p.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $BRAINCORL_DATA)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    p.set_defaults(func=_cmd_extract, _real_command="extract-features")


# ---------------------------------------------------------------------- entry point
def register(subparsers) -> None:
    """Add ``fetch``, ``prepare-nsd`` and ``extract-features`` to a sub-parsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The result of ``parser.add_subparsers(dest="command")`` of the ``braincorl-lite`` parser.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="braincorl-lite")
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["fetch", "clip", "--dry-run"])
    >>> args.model, callable(args.func)
    ('ViT-B-32', True)
    """
    _register_fetch(subparsers)
    _register_prepare(subparsers)
    _register_extract(subparsers)
