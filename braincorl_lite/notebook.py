"""Support for the book's notebooks: recorded values, device choice, execution with papermill.

Notebooks call :func:`record` for the numbers a chapter reports (an EV table, an accuracy); the
tests execute the notebooks with papermill and read those numbers back with
:func:`read_records`, so they check results, not just that a notebook ran.

Executing every notebook in place, as the book's main command does::

    python -m braincorl_lite.notebook notebooks/*.ipynb --timings runs/notebook_timings.csv
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

__all__ = ["RECORD_MIME", "record", "glue", "read_records", "resolve_device", "strip_volatile", "execute_notebook"]

#: MIME type of recorded values in a notebook's outputs
RECORD_MIME = "application/vnd.braincorl-lite.record+json"
#: matplotlib backend of executed notebooks: figures are embedded as PNG outputs
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _jsonable(value):
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame: {column: {index: value}}
        return {str(c): {str(i): _jsonable(v) for i, v in col.items()} for c, col in value.to_dict().items()}
    if hasattr(value, "to_dict"):  # Series
        return {str(i): _jsonable(v) for i, v in value.to_dict().items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in np.asarray(value, dtype=object).tolist()] if isinstance(value, np.ndarray) \
            else [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    return value


def record(name: str, value) -> None:
    """Record a value in the notebook's output so that tests can read it back.

    ``value`` may be a number, a string, a list, a dict, a NumPy array or a pandas object (keys
    become strings; NaN and inf become ``None``). In the rendered book the cell can be hidden
    with the ``remove-cell`` tag; the text shown in Jupyter is a one-line summary.
    """
    from IPython.display import display

    payload = {name: _jsonable(value)}
    text = json.dumps(payload)
    display({RECORD_MIME: payload, "text/plain": f"recorded {name}: {text[:200]}"}, raw=True)


def glue(name: str, value) -> None:
    """Make ``value`` available to the chapter's text as ``{glue:text}`name:.3f``` (myst-nb).

    NumPy scalars are turned into Python numbers first, so that the book can format them (their
    ``repr`` is ``np.float64(...)``, which a format specification cannot read). Strings to show as
    text are glued as Markdown and referenced with ``{glue:md}`name```.
    """
    from IPython.display import Markdown
    from myst_nb import glue as _glue

    if isinstance(value, str):
        value = Markdown(value)
    elif isinstance(value, (np.bool_, bool)):
        value = bool(value)
    elif isinstance(value, np.integer):
        value = int(value)
    elif isinstance(value, (np.floating, float)):
        value = float(value)
    _glue(name, value, display=False)


def read_records(notebook) -> dict:
    """All values recorded with :func:`record` in an executed notebook (path or nbformat node)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4) if isinstance(notebook, (str, Path)) else notebook
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if RECORD_MIME in data:
                payload = data[RECORD_MIME]
                out.update(json.loads(payload) if isinstance(payload, str) else payload)
    return out


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``; other values pass through."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def strip_volatile(nb):
    """Remove metadata that changes on every run (timings, papermill bookkeeping) from a notebook."""
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type == "code":
            for o in cell.get("outputs", []):
                # progress-bar widgets cannot be rendered statically; keep their text form
                data = o.get("data")
                if data and "application/vnd.jupyter.widget-view+json" in data and "text/plain" in data:
                    data.pop("application/vnd.jupyter.widget-view+json")
    return nb


def execute_notebook(path, out=None, parameters: Optional[dict] = None, kernel_name: str = "python3",
                     cwd=None, timeout: int = 3600) -> float:
    """Execute a notebook with papermill (in place unless ``out`` is given); return the wall time in s.

    Volatile metadata are stripped from the result (:func:`strip_volatile`). The working directory
    is the notebook's folder unless ``cwd`` is given. The kernel uses matplotlib's inline backend,
    so figures are embedded even when ``MPLBACKEND`` is set to a non-interactive backend.
    """
    import nbformat
    import papermill as pm

    path = Path(path)
    out = Path(out) if out is not None else path
    # figures must be embedded in the notebook whatever the caller's MPLBACKEND (often "agg",
    # which would silently drop every figure): the kernel inherits this environment
    saved = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        t0 = time.perf_counter()
        pm.execute_notebook(str(path), str(out), parameters=parameters or {}, kernel_name=kernel_name,
                            cwd=str(cwd or path.parent), progress_bar=False, execution_timeout=timeout)
        seconds = time.perf_counter() - t0
    finally:
        if saved is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = saved
    nb = nbformat.read(str(out), as_version=4)
    nbformat.write(strip_volatile(nb), str(out))
    return seconds


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m braincorl_lite.notebook",
                                     description="Execute notebooks in place with papermill (default parameters).")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter (value parsed as JSON when possible)")
    parser.add_argument("--timings", type=Path, help="write a CSV of the execution times")
    args = parser.parse_args(argv)
    params = {}
    for name, value in args.parameter:
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    rows = []
    total = time.perf_counter()
    for nb in args.notebooks:
        print(f"executing {nb} ...", flush=True)
        seconds = execute_notebook(nb, parameters=params)
        rows.append((nb.name, seconds))
        print(f"  {seconds:7.1f} s", flush=True)
    total = time.perf_counter() - total
    print(f"all notebooks: {total:.1f} s")
    if args.timings:
        args.timings.parent.mkdir(parents=True, exist_ok=True)
        with open(args.timings, "w") as f:
            f.write("notebook,seconds\n")
            for name, s in rows:
                f.write(f"{name},{s:.1f}\n")
            f.write(f"all,{total:.1f}\n")
        print(f"wrote {args.timings}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
