"""The committed chapters: executed, clean and parameterised; and the book builds from them.

The papermill runs of each chapter with fast parameters, asserting on the values it records,
are in ``tests/test_notebooks_*.py``.
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from braincorl_lite.notebook import RECORD_MIME

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    "01_feature_extraction.ipynb",
    "02_meta_training.ipynb",
    "03_few_shot_inference.ipynb",
    "04_test_time_scaling.ipynb",
    "05_attention_interpretability.ipynb",
    "06_language_to_voxel.ipynb",
]
PARAMETERS = ("dataset", "size", "fast", "seed", "device")


def test_every_chapter_is_committed_and_in_the_toc():
    committed = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert committed == CHAPTERS
    toc = (ROOT / "book" / "_toc.yml").read_text()
    for name in CHAPTERS:
        assert f"notebooks/{Path(name).stem}" in toc


@pytest.mark.parametrize("name", CHAPTERS)
def test_committed_notebook_is_executed_and_clean(name):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    assert "papermill" not in nb.metadata, "volatile metadata left in the notebook"
    code = [c for c in nb.cells if c.cell_type == "code"]
    # the first code cell holds the parameters papermill overrides
    assert "parameters" in code[0].metadata.get("tags", [])
    assigned = set(re.findall(r"^(\w+)\s*=", code[0].source, flags=re.M))
    assert set(PARAMETERS) <= assigned, f"parameters cell lacks {set(PARAMETERS) - assigned}"
    assert re.search(r'^dataset\s*=\s*"simnsd"', code[0].source, flags=re.M)
    assert re.search(r"^fast\s*=\s*False", code[0].source, flags=re.M), "commit with default parameters"
    # executed in order, every code cell once, no errors
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"execution counts {counts}"
    for c in code:
        assert "execution" not in c.metadata and "papermill" not in c.metadata
        for o in c.get("outputs", []):
            assert o.output_type != "error", f"error output in {name}: {o.get('ename')}"
            if o.output_type == "stream":
                assert "Traceback" not in o.text
    assert sum(len(c.get("outputs", [])) for c in code) > len(code) // 2
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert images >= 2, "a chapter shows its results as figures"
    records = [o for c in code for o in c.get("outputs", []) if RECORD_MIME in o.get("data", {})]
    assert records, "the chapter records the values its test checks"
    # teaching structure: objectives and time up front, an exercise with a hidden solution, a summary
    first = nb.cells[0]
    assert first.cell_type == "markdown" and re.search(r"objective|you will learn", first.source, re.I)
    assert re.search(r"time", first.source, re.I)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"exercise", text, re.I)
    assert any("hide-input" in c.metadata.get("tags", []) for c in code), "solutions are hidden"
    assert re.search(r"^#+ .*summary", text, re.I | re.M)
    assert "{cite}" in text


@pytest.mark.slow
def test_book_builds_with_warnings_as_errors(tmp_path):
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "build", str(ROOT), "--toc", "book/_toc.yml", "-W", "--path-output", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"book built in {seconds:.0f} s")
    html = tmp_path / "_build" / "html"
    for name in CHAPTERS:
        page = (html / "notebooks" / name.replace(".ipynb", ".html")).read_text()
        assert "Traceback" not in page
        assert "<img" in page, f"{name} shows no figure"
    assert (html / "book" / "glossary.html").exists()
    references = (html / "book" / "references.html").read_text().lower()
    assert "meta-learning an in-context transformer" in references  # the cited BraInCoRL paper
    assert "a massive 7t fmri dataset" in references
