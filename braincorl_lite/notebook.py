"""Support for the book's notebooks: recorded values, execution, exercises and student editions.

Notebooks :func:`record` the numbers a chapter reports; the tests execute the notebooks with
papermill and read them back (:func:`read_records`), so they check results, not just that a
notebook ran. :func:`check_notebook` checks the exercise contract and glue rule of
``notebooks/README.md``. Executing every notebook in place (the book's main command), checking the
chapters, writing the student editions (solutions removed, outputs cleared)::

    python -m braincorl_lite.notebook notebooks/*.ipynb --timings runs/notebook_timings.csv
    python -m braincorl_lite.notebook check notebooks/*.ipynb
    python -m braincorl_lite.notebook students notebooks/students
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ._device import resolve_device  # re-exported: the chapters import it from here

__all__ = ["RECORD_MIME", "record", "glue", "read_records", "resolve_device", "strip_volatile", "execute_notebook",
           "exercises", "typed_numbers", "check_notebook", "student_edition", "write_students"]

#: MIME type of recorded values in a notebook's outputs
RECORD_MIME = "application/vnd.braincorl-lite.record+json"
#: matplotlib backend of executed notebooks: figures are embedded as PNG outputs
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _jsonable(value):
    """``value`` with string keys, Python numbers and NaN/inf as None (pandas objects as dicts)."""
    if hasattr(value, "to_dict"):  # DataFrame {column: {index: value}}, Series {index: value}
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not np.isfinite(value) else value


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
    elif isinstance(value, np.generic):
        value = value.item()
    _glue(name, value, display=False)


def _read(notebook):
    """An nbformat notebook from a path (or the notebook itself)."""
    import nbformat

    return nbformat.read(str(notebook), as_version=4) if isinstance(notebook, (str, Path)) else notebook


_GLUE_MIME = "application/papermill.record/"
_GLUE_ROLE = re.compile(r"\{glue(?::(?:text|md|any))?\}`([^`:]+)(?::([^`]*))?`")


def glued_values(notebook) -> dict:
    """The values glued with :func:`glue` in an executed notebook, as myst-nb stores them:
    ``{name: (mime, text)}`` with the mime ``text/plain`` (a ``repr``) or ``text/markdown``."""
    out = {}
    for cell in _read(notebook).cells:
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            for mime, text in o.get("data", {}).items():
                if name and mime.startswith(_GLUE_MIME):
                    out[name] = (mime[len(_GLUE_MIME):], text)
    return out


def resolve_glue(markdown: str, values: dict) -> str:
    """``markdown`` with its ``{glue:...}`name:fmt``` roles replaced by the glued values, formatted as
    the book formats them; roles naming an unknown value (or another document) stay as they are.

    >>> resolve_glue("EV {glue:text}`ev:.3f`, {glue:md}`who`", {"ev": ("text/plain", "0.12345"),
    ...                                                    "who": ("text/markdown", "ridge")})
    'EV 0.123, ridge'
    """
    import ast

    def paste(m):
        if m.group(1) not in values:
            return m.group(0)
        mime, text = values[m.group(1)]
        if mime != "text/plain" or not m.group(2):
            return text
        return format(ast.literal_eval(text), m.group(2))
    return _GLUE_ROLE.sub(paste, markdown)


def read_records(notebook) -> dict:
    """All values recorded with :func:`record` in an executed notebook (path or nbformat node)."""
    out = {}
    for cell in _read(notebook).cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if RECORD_MIME in data:
                payload = data[RECORD_MIME]
                out.update(json.loads(payload) if isinstance(payload, str) else payload)
    return out


def strip_volatile(nb):
    """Remove metadata that changes on every run (timings, papermill bookkeeping) from a notebook."""
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in ("papermill", "execution", "ExecuteTime"):
            cell.metadata.pop(key, None)
        for o in cell.get("outputs", []):  # progress-bar widgets cannot be rendered: keep their text form
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
    from unittest.mock import patch

    import nbformat
    import papermill as pm

    path = Path(path)
    out = Path(out) if out is not None else path
    t0 = time.perf_counter()
    # the kernel inherits the environment: a caller's MPLBACKEND=agg would silently drop every figure
    with patch.dict(os.environ, MPLBACKEND=INLINE_BACKEND):
        pm.execute_notebook(str(path), str(out), parameters=parameters or {}, kernel_name=kernel_name,
                            cwd=str(cwd or path.parent), progress_bar=False, execution_timeout=timeout)
    seconds = time.perf_counter() - t0
    nbformat.write(strip_volatile(nbformat.read(str(out), as_version=4)), str(out))
    return seconds


# --------------------------------------------------------------------------------------------
# The exercise contract and the glue rule (notebooks/README.md)
# --------------------------------------------------------------------------------------------
EXERCISE, SOLUTION = "exercise", "solution"
#: words before a number that make it a label, not a result ("Exercise 2.1", "chapter 3.2")
_LABEL = re.compile(r"(exercises?|chapters?|sections?|figures?|tables?|equations?|eq\.|versions?|v)\s*(\d*\.?\d+\s*(,|and|or|to)\s*)*$", re.I)
_NUMBER = re.compile(r"(?<![\w.])(\d*\.\d+|\d+)(\s*%)?")


def _tags(cell) -> list:
    return cell.metadata.get("tags", [])


def exercises(notebook) -> list:
    """The exercises of a notebook: one dict per markdown cell tagged ``exercise``.

    Each has ``title``, ``text``, ``expected`` (``{record name: [value, tolerance]}`` from the cell's
    metadata) and the code cells that follow it: ``skeleton`` (tagged ``exercise``) and
    ``solution`` (tagged ``solution``).
    """
    out = []
    for cell in _read(notebook).cells:
        if cell.cell_type == "markdown" and EXERCISE in _tags(cell):
            out.append({"title": cell.source.strip().splitlines()[0].strip("#* "), "text": cell.source,
                        "expected": dict(cell.metadata.get("expected", {})), "skeleton": [], "solution": []})
        elif cell.cell_type == "code" and out and ({EXERCISE, SOLUTION} & set(_tags(cell))):
            out[-1]["skeleton" if EXERCISE in _tags(cell) else "solution"].append(cell)
    return out


def _units(markdown: str):
    """Table rows, list items and sentences of a markdown text (code blocks and math removed)."""
    md = re.sub(r"<!--.*?-->", " ", markdown, flags=re.S)

    def fence(m):  # prose directives ({note}, {admonition}) keep their text, not their options
        info = m.group(2).strip()
        if info.startswith("{") and not info.startswith(("{math}", "{code")):
            return re.sub(r"^\s*:[\w-]+:.*$", "", m.group(3), flags=re.M)
        return "\n"
    md = re.sub(r"^(`{3,}|:{3,})(.*?)\n(.*?)^\1[ \t]*$", fence, md, flags=re.S | re.M)
    md = re.sub(r"\$\$.*?\$\$", " ", md, flags=re.S)
    md = re.sub(r"(?<!\\)\$[^$\n]+\$", " ", md)
    for paragraph in re.split(r"\n\s*\n", md):
        blocks = re.split(r"\n(?=\s*(?:\||[*+-]\s|\d+\.\s|#))", paragraph)
        for block in blocks:
            yield from re.split(r"(?<=[.!?])\s+(?=[A-Z*({\[])", " ".join(block.split()))


def typed_numbers(markdown: str) -> list:
    """Numbers in ``markdown`` that break the glue rule of ``notebooks/README.md``.

    Decimal numbers and percentages count; integers, numbers in math, code spans and roles
    (``{glue:text}`key:.3f```), labels ("Exercise 2.1") and numbers in a sentence, list item or
    table row that carries a ``{cite}`` role (a quoted paper figure) do not.

    >>> typed_numbers("Ridge reaches 0.067 at $K = 100$; the model {glue:text}`ev:.3f`.")
    ['0.067']
    >>> typed_numbers("The paper reports 0.35 on NSD {cite:p}`yu2025braincorl`. We use `alpha=0.5`, 3 repeats.")
    []
    """
    found = []
    for unit in _units(markdown):
        if "{cite" in unit:
            continue
        unit = re.sub(r"\{[\w:-]+\}`[^`]*`", " ", unit)       # roles
        unit = re.sub(r"`[^`]*`", " ", unit)                   # code spans
        unit = re.sub(r"\]\([^)]*\)|<[^>]+>", " ", unit)       # link targets, HTML tags
        for m in _NUMBER.finditer(unit):
            if ("." in m.group(1) or m.group(2)) and not _LABEL.search(unit[:m.start()]):
                found.append(m.group(0).strip())
    return found


def _close(value, expected, tol) -> bool:
    if isinstance(expected, (list, tuple)):
        return isinstance(value, (list, tuple)) and len(value) == len(expected) and \
            all(_close(v, e, tol) for v, e in zip(value, expected))
    if isinstance(expected, (bool, str)) or expected is None:
        return value == expected
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value - expected) <= (tol or 0) + 1e-12


def _typed_in_text(text: str, expected, tol) -> bool:
    if isinstance(expected, (list, tuple)):
        return all(_typed_in_text(text, e, tol) for e in expected)
    if isinstance(expected, (bool, str)):
        return str(expected) in text
    after = re.split(r"expected result", text, flags=re.I)[-1]
    numbers = [float(n) for n in re.findall(r"-?\d*\.?\d+(?:e-?\d+)?", after.replace(",", ""))]
    return any(abs(n - expected) <= (tol or 0) + 1e-12 for n in numbers)


def _names(source: str):
    """Names a cell assigns at top level and names it reads (IPython magics allowed)."""
    import ast

    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))
    stored = {t.id for node in tree.body for t in ast.walk(node) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    stored |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return stored, loaded


def check_notebook(notebook, min_exercises: int = 3) -> list:
    """Problems of a chapter with the exercise contract and the glue rule; ``[]`` when it follows both.

    Reads the committed (executed) notebook: recorded solution values are compared with the
    expected values of the exercise cells' metadata.
    """
    nb = _read(notebook)
    problems = []
    chapter = re.match(r"(\d+)_", Path(notebook).name) if isinstance(notebook, (str, Path)) else None
    found = exercises(nb)
    if len(found) < min_exercises:
        problems.append(f"{len(found)} exercises (at least {min_exercises})")
    records, glued = read_records(nb), glued_values(nb)
    for ex in found:
        title = ex["title"]
        m = re.match(r"Exercise (\d+)\.(\d+)", title)
        if not m:
            problems.append(f"{title!r}: the title must start with 'Exercise N.M'")
            continue
        if chapter and int(m.group(1)) != int(chapter.group(1)):
            problems.append(f"{title!r}: numbered for another chapter")
        key = f"exercise_{m.group(1)}_{m.group(2)}"
        if set(ex["expected"]) != {key}:
            problems.append(f"{title!r}: metadata 'expected' must be {{{key!r}: [value, tolerance]}}")
        if "expected result" not in ex["text"].lower():
            problems.append(f"{title!r}: the text gives no 'Expected result'")
        if not ex["skeleton"] or not all(re.search(r"\.\.\.|NotImplementedError", c.source) for c in ex["skeleton"]):
            problems.append(f"{title!r}: needs a skeleton cell tagged 'exercise' with '...' or NotImplementedError")
        if not ex["solution"]:
            problems.append(f"{title!r}: needs a solution cell tagged 'solution'")
        elif not any("hide-input" in _tags(c) for c in ex["solution"]):
            problems.append(f"{title!r}: the solution cell must also be tagged 'hide-input'")
        for name, spec in ex["expected"].items():
            value, tol = (list(spec) + [None])[:2] if isinstance(spec, (list, tuple)) else (spec, None)
            if not _typed_in_text(resolve_glue(ex["text"], glued), value, tol):
                problems.append(f"{title!r}: expected value {value!r} is not in its text")
            if name not in records:
                problems.append(f"{title!r}: the solution does not record({name!r}, ...)")
            elif not _close(records[name], value, tol):
                problems.append(f"{title!r}: solution gives {records[name]!r}, expected {value!r} +- {tol}")
    # a student edition must run: later cells may not read names that only a solution defines
    defined, solution_only = set(), set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        stored, loaded = _names(cell.source)
        if SOLUTION in _tags(cell):
            solution_only |= stored - defined
            continue
        late = (loaded & solution_only) - (stored if EXERCISE in _tags(cell) else set())
        if late and EXERCISE not in _tags(cell):
            problems.append(f"a cell reads {sorted(late)}, defined only in a solution")
        defined |= stored
        solution_only -= stored
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "remove-cell" not in _tags(cell):
            typed = typed_numbers(cell.source)
            if typed:
                line = cell.source.strip().splitlines()[0][:60]
                problems.append(f"typed numbers {typed} in the markdown cell starting {line!r} (glue them)")
    return problems


def student_edition(notebook):
    """A copy without the cells tagged ``solution``, with every output cleared and the glued
    values pasted into the text (Jupyter does not render ``{glue:...}`` roles).

    A list comprehension does what nbconvert's ``TagRemovePreprocessor`` and
    ``ClearOutputPreprocessor`` would, without the dependency.
    """
    import copy

    import nbformat

    nb = copy.deepcopy(_read(notebook))
    glued = glued_values(nb)  # read before the solutions (which glue the expected results) go
    nb.cells = [c for c in nb.cells if SOLUTION not in _tags(c)]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        elif cell.cell_type == "markdown":  # Jupyter shows roles raw: paste the book's values
            cell.source = resolve_glue(cell.source, glued)
    note = nbformat.v4.new_markdown_cell(
        "*Student edition: the solutions are removed. Each exercise states its expected result; "
        "the book shows the worked solutions.*")
    nb.cells.insert(1, note)
    nb.metadata["braincorl-lite"] = {"edition": "student"}
    return nb


def write_students(notebooks, outdir) -> list:
    """Write the student edition of each notebook into ``outdir`` (same file names); return the paths."""
    import nbformat

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in map(Path, notebooks):
        nbformat.write(student_edition(path), str(outdir / path.name))
        paths.append(outdir / path.name)
    return paths


def _chapters(paths) -> list:
    return list(paths) or sorted(Path(__file__).resolve().parents[1].joinpath("notebooks").glob("[0-9]*.ipynb"))


def main(argv: Optional[Iterable[str]] = None) -> int:
    import sys

    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "students":
        parser = argparse.ArgumentParser(prog="python -m braincorl_lite.notebook students",
                                         description="Write student editions: solutions removed, outputs cleared.")
        parser.add_argument("outdir", type=Path, nargs="?", default=Path("notebooks/students"))
        parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter in notebooks/")
        args = parser.parse_args(args_in[1:])
        for path in write_students(_chapters(args.notebooks), args.outdir):
            print(f"wrote {path}")
        return 0
    if args_in and args_in[0] == "check":
        failed = 0
        for path in _chapters(Path(p) for p in args_in[1:]):
            problems = check_notebook(path)
            failed += bool(problems)
            print(f"{path.name}: {'ok' if not problems else f'{len(problems)} problems'}")
            for problem in problems:
                print(f"  - {problem}")
        return int(failed > 0)
    parser = argparse.ArgumentParser(prog="python -m braincorl_lite.notebook",
                                     description="Execute notebooks in place with papermill (default parameters).")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter (value parsed as JSON when possible)")
    parser.add_argument("--timings", type=Path, help="write a CSV of the execution times")
    args = parser.parse_args(args_in)
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
        import pandas as pd

        args.timings.parent.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(rows + [("all", total)], columns=["notebook", "seconds"])
        table.to_csv(args.timings, index=False, float_format="%.1f")
        print(f"wrote {args.timings}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
