"""Lines of the package: per module, split into code, docstrings, comments and blank lines.

    .venv/bin/python benchmarks/package_size.py

The "core" is what the chapters import for the method itself (model, checkpoint, data, datasets,
cortex, baselines, metrics, evaluation, plotting and the model's private shortcuts).
"""
import ast
from pathlib import Path

import pandas as pd

PACKAGE = Path(__file__).resolve().parents[1] / "braincorl_lite"
CORE = {"model", "_fastpath", "checkpoint", "data", "datasets", "cortex", "baselines", "metrics", "evaluation",
        "plotting"}


def count(path: Path) -> dict:
    source = path.read_text()
    lines = source.splitlines()
    in_docstring = set()  # line numbers (from 1), blank lines inside a docstring included
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                in_docstring.update(range(first.lineno, first.end_lineno + 1))
    rest = [line.strip() for number, line in enumerate(lines, 1) if number not in in_docstring]
    blank = sum(not line for line in rest)
    comments = sum(line.startswith("#") for line in rest)
    return {"lines": len(lines), "code": len(rest) - blank - comments, "docstrings": len(in_docstring),
            "comments": comments, "blank": blank}


def main() -> None:
    rows = {p.relative_to(PACKAGE).as_posix(): count(p) for p in sorted(PACKAGE.rglob("*.py"))}
    table = pd.DataFrame.from_dict(rows, orient="index").sort_values("lines", ascending=False)
    core = table.loc[[name for name in table.index if name.removesuffix(".py") in CORE]]
    print(table.to_string())
    print(f"\npackage: {table.sum().to_dict()}")
    print(f"core ({', '.join(sorted(CORE))}): {core.sum().to_dict()}")


if __name__ == "__main__":
    main()
