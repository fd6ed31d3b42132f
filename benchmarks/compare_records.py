"""Compare the values the committed chapters record with those of an earlier revision.

    .venv/bin/python benchmarks/compare_records.py REV

For every chapter that exists at both revisions, counts the numeric recorded values they share and
lists those that differ (relative tolerance 1e-6): after a refactoring, only timings should.
"""
import argparse
import math
import subprocess
from pathlib import Path

import nbformat

from braincorl_lite.notebook import read_records

ROOT = Path(__file__).resolve().parents[1]


def flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}", item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare with, e.g. HEAD~5")
    args = parser.parse_args(argv)
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        shown = subprocess.run(["git", "show", f"{args.rev}:notebooks/{path.name}"], cwd=ROOT,
                               capture_output=True, text=True)
        if shown.returncode:
            continue
        old = {}
        for name, value in read_records(nbformat.reads(shown.stdout, as_version=4)).items():
            flatten(name, value, old)
        new = {}
        for name, value in read_records(path).items():
            flatten(name, value, new)
        common = sorted(set(old) & set(new))
        differ = [k for k in common if not math.isclose(old[k], new[k], rel_tol=1e-6, abs_tol=1e-9)]
        print(f"{path.name}: {len(common)} shared values, {len(common) - len(differ)} identical")
        for key in differ:
            print(f"    {key}: {old[key]:.4g} -> {new[key]:.4g}")


if __name__ == "__main__":
    main()
