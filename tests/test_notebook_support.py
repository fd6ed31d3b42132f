"""Recorded values, metadata stripping and papermill execution of notebooks."""

import json
import os

import nbformat
import pandas as pd
import pytest

from braincorl_lite.notebook import RECORD_MIME, _jsonable, execute_notebook, read_records, resolve_device, strip_volatile


def test_jsonable_handles_numpy_pandas_and_nan():
    import numpy as np

    df = pd.DataFrame({"ev": [0.1, np.nan]}, index=[10, 100])
    out = _jsonable({"table": df, "n": np.int64(3), "x": np.float32(0.5), "flag": np.bool_(True),
                     "arr": np.array([1.0, np.inf])})
    assert out == {"table": {"ev": {"10": 0.1, "100": None}}, "n": 3, "x": 0.5, "flag": True, "arr": [1.0, None]}
    json.dumps(out)


def test_strip_volatile_removes_timings():
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"duration": 1.0}
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata["execution"] = {"iopub.status.busy": "2026"}
    cell.metadata["papermill"] = {"duration": 1.0}
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    strip_volatile(nb)
    assert "papermill" not in nb.metadata
    assert dict(nb.cells[0].metadata) == {"tags": ["parameters"]}


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")


@pytest.mark.slow
def test_execute_with_parameters_and_read_records(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("fast = False\nn = 2")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from braincorl_lite.notebook import record\nrecord('result', {'n': n, 'fast': fast})"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.show()")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    out = tmp_path / "out.ipynb"
    monkeypatch.setenv("MPLBACKEND", "agg")  # a common setting that must not drop the figures
    seconds = execute_notebook(src, out, parameters={"n": 5, "fast": True})
    assert os.environ["MPLBACKEND"] == "agg"
    assert seconds > 0
    assert read_records(out) == {"result": {"n": 5, "fast": True}}
    executed = nbformat.read(out, as_version=4)
    assert "papermill" not in executed.metadata
    assert any(RECORD_MIME in o.get("data", {}) for c in executed.cells for o in c.get("outputs", []))
    assert any("image/png" in o.get("data", {}) for c in executed.cells for o in c.get("outputs", [])), \
        "figure not embedded"
