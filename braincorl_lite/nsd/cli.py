"""The real-data sub-commands of ``braincorl-lite``: ``fetch``, ``prepare-nsd``, ``extract-features``.

:func:`register` adds them to the parser of :mod:`braincorl_lite.cli`. A handler returns an exit
code (0 success, 1 error, printed as one message without a traceback). A typical run, after
accepting the NSD data-use terms::

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
import functools
import os
import sys
from pathlib import Path

from ..errors import BraInCoRLError, ConfigError
from . import fetch

_NSD_GROUPS = ("design", "stimuli", "betas", "rois", "ncsnr")


def _handler(fn):
    """Run a command with ``--cache-dir`` as ``$BRAINCORL_DATA``; known errors give exit code 1."""

    @functools.wraps(fn)
    def run(args) -> int:
        old = os.environ.get(fetch.ENV_CACHE)
        if getattr(args, "cache_dir", None):
            os.environ[fetch.ENV_CACHE] = str(Path(args.cache_dir).expanduser())
        try:
            return int(fn(args) or 0)
        except (BraInCoRLError, OSError, ValueError, KeyError, RuntimeError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            print(f"braincorl-lite {args.real_command}: error: {msg}", file=sys.stderr)
            return 1
        finally:
            if old is None:
                os.environ.pop(fetch.ENV_CACHE, None)
            else:
                os.environ[fetch.ENV_CACHE] = old

    return run


def _what_list(text: str) -> list:
    items = [w.strip().lower() for w in text.split(",") if w.strip()]
    if not items or set(items) - set(_NSD_GROUPS):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(_NSD_GROUPS)} (comma-separated), got {text!r}")
    return items


@_handler
def _cmd_fetch(args) -> int:
    if args.fetch_target == "list":
        for name, e in sorted(fetch.load_manifests().items()):
            size = f"{e.size_bytes / 1e6:.1f} MB" if e.size_bytes else (e.size_note or "size unknown")
            params = f" [{', '.join(e.placeholders)}]" if e.placeholders else ""
            print(f"{name}{params}  ({e.group}{', optional' if e.optional else ''}; {size})\n    {e.url}")
        return 0
    if args.fetch_target == "forget-pin":
        given = {k: v for k, v in (("subject", args.subject), ("session", args.session)) if v is not None}
        entry = fetch.get_entry(args.name, **given)  # names the missing --subject / --session
        where = fetch.cache_dir() / fetch.PINS_FILE
        if fetch.forget_pin(entry):
            print(f"forgot the pin of {entry.label} in {where}; the next `{fetch.fetch_command(entry)}` pins the new file")
        else:
            print(f"{entry.label} has no pin in {where}; nothing to do", file=sys.stderr)
        return 0
    if args.fetch_target == "clip":
        entries = [fetch.clip_entry(args.model, args.pretrained)]
    else:
        from .design import parse_sessions

        needs_subject = {"betas", "rois", "ncsnr"} & set(args.what)
        if needs_subject and args.subject is None:
            raise ValueError(f"--subject is required to fetch {', '.join(sorted(needs_subject))}")
        sessions = parse_sessions(args.sessions, args.subject) if "betas" in args.what else []
        entries = fetch.nsd_entries(args.subject or 1, sessions, what=args.what, include_optional=not args.no_optional)
    if args.dry_run:
        print(fetch.describe(entries))
        return 0
    if args.fetch_target == "nsd":
        print(("note: nsd_stimuli.hdf5 is about 37 GiB\n" if "stimuli" in args.what else "")
              + "NSD files are covered by the NSD Terms and Conditions and the data access agreement "
              "(https://naturalscenesdataset.org/); fetching them means you have accepted those terms.", file=sys.stderr)
    for p in fetch.fetch_entries(entries, retries=args.retries, progressbar=not args.no_progress):
        print(p)
    return 0


def _register_fetch(subparsers) -> None:
    sub = subparsers.add_parser(
        "fetch", help="download NSD files or CLIP weights into the cache (explicit, hash-checked)",
        description="Download files listed in data_manifests/ into the cache ($BRAINCORL_DATA or "
                    "~/.cache/braincorl_lite). Cached files are checked, not downloaded again; interrupted "
                    "transfers resume. Nothing else in braincorl-lite downloads.",
    ).add_subparsers(dest="fetch_target", metavar="{nsd,clip,list,forget-pin}", required=True)
    n = sub.add_parser("nsd", help="NSD design, ROIs, betas, ncsnr or stimuli of one subject",
                       description="Fetch NSD files (needs the NSD data-use agreement, https://naturalscenesdataset.org/).")
    n.add_argument("--subject", type=int, choices=range(1, 9), metavar="{1..8}", help="needed for betas, rois, ncsnr")
    n.add_argument("--sessions", default="public", metavar="SPEC",
                   help="sessions whose betas to fetch (~1 GB each): 'public' (default: all but the last three, "
                        "held out), 'all', '1-40', '1,3,5-7'")
    n.add_argument("--what", type=_what_list, default=["design", "rois", "betas"], metavar="LIST",
                   help=f"comma-separated among {', '.join(_NSD_GROUPS)} (default: design,rois,betas; stimuli is ~37 GiB)")
    n.add_argument("--no-optional", action="store_true", help="skip optional files (label tables, stimulus info)")
    c = sub.add_parser("clip", help="CLIP weights for open_clip (data_manifests/clip.yaml)")
    c.add_argument("--model", default="ViT-B-32", help="open_clip model name (default: ViT-B-32)")
    c.add_argument("--pretrained", default="openai", help="openai (default, the paper's encoder) or laion2b_s34b_b79k")
    for q in (n, c):
        q.add_argument("--dry-run", action="store_true", help="list the files (present or missing, size, URL) only")
        q.add_argument("--retries", type=int, default=3, metavar="N", help="extra attempts after a failed download")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
    fp = sub.add_parser("forget-pin", help="forget the recorded sha256 of a file that changed upstream on purpose",
                        description="Files without a sha256 in data_manifests/ are pinned on first download "
                                    "(<cache>/pins.json). Forget the pin, delete the old copy, and fetch it again.")
    fp.add_argument("name", help="manifest entry name, e.g. nsd.betas_session (see `braincorl-lite fetch list`)")
    fp.add_argument("--subject", type=int, metavar="N", help="subject of a per-subject entry")
    fp.add_argument("--session", type=int, metavar="N", help="session of a per-session entry")
    lst = sub.add_parser("list", help="list every manifest entry")
    for q, name in ((n, "nsd"), (c, "clip"), (fp, "forget-pin"), (lst, "list")):
        q.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $BRAINCORL_DATA)")
        q.set_defaults(func=_cmd_fetch, real_command=f"fetch {name}")


@_handler
def _cmd_prepare(args) -> int:
    from .prepare import prepare_subject

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    data = prepare_subject(
        args.subject, args.features, out, nsd_root=args.nsd_root, sessions=args.sessions,
        min_repeats=args.min_repeats, ncsnr=args.ncsnr, verify=not args.no_verify,
        use_stim_info=not args.no_stim_info, progress=not args.no_progress, voxels=args.voxels)
    print(repr(data))
    vs, dropped = data.meta["voxel_set"], data.meta["n_voxels_dropped_nan"]
    print(f"voxels: {vs['name']} ({vs['definition']}), {vs['n_voxels']} of {data.meta['n_voxels_nsdgeneral']} "
          "nsdgeneral voxels" + (f"; dropped {dropped} voxel(s) with NaN values" if dropped else ""), file=sys.stderr)
    print(f"saved {out}")
    return 0


def _register_prepare(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare-nsd", help="build the subject container of one real NSD subject",
        description="Read one NSD subject's design, betas and ROI volumes from the cache (or --nsd-root), one "
                    "session at a time; z-score per session, average repeats, label fLoc ROIs, compute the noise "
                    "ceiling, attach image features, and save a container for load_dataset('nsd').")
    p.add_argument("--subject", type=int, required=True, choices=range(1, 9), metavar="{1..8}",
                   help="NSD subject (the paper uses 1, 2, 5, 7)")
    p.add_argument("--features", required=True, metavar="PATH", help="features file covering the subject's images")
    p.add_argument("--out", required=True, metavar="PATH", help="output container (.npz)")
    p.add_argument("--sessions", default="public", metavar="SPEC", help="'public' (default), 'all', '1-37', '1,3,5-7'")
    p.add_argument("--nsd-root", metavar="DIR", help="a local NSD copy with the bucket layout (default: the cache)")
    p.add_argument("--min-repeats", type=int, default=1, choices=(1, 2, 3),
                   help="keep images shown at least this many times in the sessions used (default: 1)")
    p.add_argument("--ncsnr", default="computed", choices=("computed", "nsd"),
                   help="noise-ceiling SNR computed from the sessions used (default) or NSD's ncsnr.nii.gz")
    p.add_argument("--voxels", default="nsdgeneral", choices=("nsdgeneral", "higher-visual"),
                   help="nsdgeneral (default): NSD's visual-cortex mask; higher-visual: only its voxels inside "
                        "NSD's fLoc ROIs, closer to the paper's higher visual cortex (recorded in meta['voxel_set'])")
    p.add_argument("--no-stim-info", action="store_true", help="ignore nsd_stim_info_merged.csv")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_prepare, real_command="prepare-nsd")


@_handler
def _cmd_extract(args) -> int:
    from .design import subject_image_ids
    from .features import extract_folder_features, extract_nsd_features, load_clip

    if args.weights and args.pretrained in ("none", "") and args.quick_gelu is None:
        raise ConfigError(
            f"--weights {args.weights} with --pretrained none: say whether the checkpoint needs QuickGELU "
            "activations (--quick-gelu for OpenAI CLIP weights, --no-quick-gelu otherwise), or label it with a "
            "--pretrained tag from data_manifests/clip.yaml, which knows")
    encoder = load_clip(args.model, args.pretrained, weights=args.weights, device=args.device, quick_gelu=args.quick_gelu)
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
        description="Embed images with an open_clip model whose weights come from the cache (fetch clip), in "
                    "batches, into an HDF5 file; work is saved chunk by chunk and a rerun resumes it.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", nargs="+", metavar=("nsd-hdf5", "PATH"),
                     help="'nsd-hdf5' and optionally the path of nsd_stimuli.hdf5 (default: the cached copy)")
    src.add_argument("--images-dir", metavar="DIR", help="a folder of images (jpg, png, ...)")
    p.add_argument("--out", required=True, metavar="PATH", help="features file to write (.h5)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name (default: ViT-B-32)")
    p.add_argument("--pretrained", default="openai", help="tag in data_manifests/clip.yaml (default: openai); 'none': random")
    p.add_argument("--weights", metavar="FILE", help="this checkpoint instead of the cached one (settings from --pretrained)")
    p.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="QuickGELU activations (OpenAI weights); needed only with --weights and a tag the manifest "
                        "does not know; a value contradicting the manifest is refused")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default: 64)")
    p.add_argument("--chunk-size", type=int, default=1024, metavar="N", help="images per resume unit (default: 1024)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--subject", type=int, choices=range(1, 9), metavar="{1..8}", help="NSD: only this subject's images")
    p.add_argument("--design", metavar="PATH", help="nsd_expdesign.mat for --subject (default: the cached copy)")
    p.add_argument("--recursive", action="store_true", help="with --images-dir, include sub-folders")
    p.add_argument("--max-chunks", type=int, metavar="N", help="stop after N new chunks (rerun to continue)")
    p.add_argument("--overwrite", action="store_true", help="discard existing output made with other settings")
    p.set_defaults(func=_cmd_extract, real_command="extract-features")


def register(subparsers) -> None:
    """Add ``fetch``, ``prepare-nsd`` and ``extract-features`` to the ``braincorl-lite`` sub-parsers.

    >>> parser = argparse.ArgumentParser(prog="braincorl-lite")
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["fetch", "clip", "--dry-run"])
    >>> args.model, callable(args.func)
    ('ViT-B-32', True)
    """
    _register_fetch(subparsers)
    _register_prepare(subparsers)
    _register_extract(subparsers)
    for name in ("prepare-nsd", "extract-features"):
        q = subparsers.choices[name]
        q.add_argument("--no-verify", action="store_true", help="skip sha256 checks of the input files")
        q.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $BRAINCORL_DATA)")
        q.add_argument("--no-progress", action="store_true", help="do not show progress bars")
