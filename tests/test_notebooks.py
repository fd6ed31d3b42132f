"""The committed chapters: executed, clean and parameterised, with exercises and glued numbers;
their student editions; and the book builds from them.

The papermill runs of each chapter with fast parameters, asserting on the values it records,
are in ``tests/test_notebooks_run.py``.
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from braincorl_lite.notebook import (EXERCISE, RECORD_MIME, SOLUTION, check_notebook, exercises, glued_values,
                                     typed_numbers, write_students)

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    "00_ridge_to_bayes.ipynb",
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


@pytest.mark.parametrize("name", CHAPTERS)
def test_exercise_contract_and_glue_rule(name):
    """notebooks/README.md: >= 3 exercises (skeleton, expected result in text and metadata, solution
    that records a value within tolerance), nothing read from a solution later, no typed result."""
    problems = check_notebook(ROOT / "notebooks" / name)
    assert not problems, "\n".join(problems)


def test_glue_rule_catches_typed_results():
    assert typed_numbers("Ridge explains 0.067 and the model 11% at $K = 100$.") == ["0.067", "11%"]
    assert typed_numbers("| claim | 0.35 {cite:p}`yu2025braincorl` |\n| ours | {glue:text}`ev:.2f` |") == []
    assert typed_numbers("See Exercise 2.1 and `dropout=0.5`; 3 repeats, $\\alpha = 0.1$.") == []
    assert typed_numbers("```{note}\n:width: 80%\nIt took 1.5 s.\n```") == ["1.5"]
    assert typed_numbers("```python\nx = 0.5\n```") == []


def test_exercise_check_fails_on_broken_exercises(tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / CHAPTERS[0], as_version=4)
    for cell in nb.cells:  # break every exercise: a wrong expected value, a solution without its tag
        if cell.cell_type == "markdown" and EXERCISE in cell.metadata.get("tags", []):
            cell.metadata["expected"] = {k: [v[0] + 1, v[1]] for k, v in cell.metadata["expected"].items()}
        if SOLUTION in cell.metadata.get("tags", []):
            cell.metadata["tags"] = [SOLUTION]
    nbformat.write(nb, tmp_path / CHAPTERS[0])
    problems = "\n".join(check_notebook(tmp_path / CHAPTERS[0]))
    assert problems.count("is not in its text") == 3 and problems.count("solution gives") == 3
    assert problems.count("hide-input") == 3


def test_student_editions(tmp_path):
    paths = write_students([ROOT / "notebooks" / n for n in CHAPTERS], tmp_path)
    assert [p.name for p in paths] == CHAPTERS
    for name, path in zip(CHAPTERS, paths):
        instructor = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        student = nbformat.read(path, as_version=4)
        tags = [c.metadata.get("tags", []) for c in student.cells]
        assert not any(SOLUTION in t for t in tags), f"{name}: a solution is left in the student edition"
        assert sum(EXERCISE in t for t in tags) == sum(EXERCISE in c.metadata.get("tags", []) for c in instructor.cells)
        assert len(exercises(student)) == len(exercises(instructor))
        assert all(not c.outputs and c.execution_count is None for c in student.cells if c.cell_type == "code")
        assert "parameters" in [c for c in student.cells if c.cell_type == "code"][0].metadata["tags"]
        # Jupyter does not render glue roles: the student reads the values, expected results included
        glued = glued_values(instructor)
        text = "\n".join(c.source for c in student.cells if c.cell_type == "markdown")
        assert not [key for key in glued if f"`{key}:" in text or f"`{key}`" in text], name
        for ex in exercises(student):
            assert re.search(r"Expected result:\s*(-?\d|True|False)", ex["text"]), (name, ex["title"])


def _setup_cell(name):
    return [c for c in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells if c.cell_type == "code"][1].source


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_chapter_has_the_same_setup_cell(name):
    """The first cell after the parameters installs the package outside a clone, as chapter 0's does."""
    setup = _setup_cell(name)
    assert "%pip install" in setup and "import braincorl_lite as bcl" in setup
    assert setup == _setup_cell(CHAPTERS[0]), "the setup cell differs from chapter 0's"


def test_intro_has_the_classroom_path_and_glues_its_results():
    intro = (ROOT / "book" / "intro.md").read_text()
    for section in ("Prerequisites", "course plan", "claims"):
        assert re.search(section, intro, re.I), section
    assert not typed_numbers(intro), typed_numbers(intro)
    # every glued SimNSD result names a key that the chapter's executed notebook holds
    for doc, key in re.findall(r"\{glue(?::text)?\}`\.\./notebooks/(\w+)\.ipynb::(\w+)", intro):
        nb = nbformat.read(ROOT / "notebooks" / f"{doc}.ipynb", as_version=4)
        keys = {o.metadata["scrapbook"]["name"] for c in nb.cells for o in c.get("outputs", [])
                if "scrapbook" in o.get("metadata", {})}
        assert key in keys, f"{doc} does not glue {key!r}"
    config = (ROOT / "_config.yml").read_text()
    assert re.search(r"colab_url:\s*https://colab", config) and re.search(r"binderhub_url:\s*https://", config)
    assert re.search(r"repository:\s*\n\s+url:\s*https://github.com/", config)


@pytest.mark.slow
def test_book_builds_with_warnings_as_errors(tmp_path):
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "build", str(ROOT), "--toc", "book/_toc.yml", "-W", "-n", "--path-output", str(tmp_path)],
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
    chapter0 = (html / "notebooks" / "00_ridge_to_bayes.html").read_text()
    assert "colab.research.google.com" in chapter0 and "mybinder.org" in chapter0, "launch buttons"
    assert "pasted-text" in (html / "book" / "intro.html").read_text(), "the claims table pastes chapter results"
    references = (html / "book" / "references.html").read_text().lower()
    assert "meta-learning an in-context transformer" in references  # the cited BraInCoRL paper
    assert "a massive 7t fmri dataset" in references
