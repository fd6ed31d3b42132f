"""Smoke tests: the benchmarks run end to end and print their figures."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_speed_benchmark_runs(tmp_path):
    out = tmp_path / "speed.csv"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--models", "lite,ridge", "--voxels", "20,40",
           "--k", "8", "--threads", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out)
    assert set(table.model) == {"lite", "ridge"} and len(table) == 4
    assert (table.seconds > 0).all() and (table.peak_rss_mb > 0).all()


def _benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_package_size_counts_every_line(tmp_path):
    size = _benchmark("package_size")
    path = tmp_path / "m.py"
    path.write_text('"""Doc\n\nstring."""\n\n# a comment\nx = 1  # code\n\n\ndef f():\n    """One line."""\n    return x\n')
    assert size.count(path) == {"lines": 11, "code": 3, "docstrings": 4, "comments": 1, "blank": 3}


def test_compare_records_finds_the_committed_chapters(capsys):
    _benchmark("compare_records").main(["HEAD"])
    out = capsys.readouterr().out
    assert "02_meta_training.ipynb" in out and "shared values" in out
