"""Smoke test: the speed benchmark runs end to end and writes its figures."""

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
