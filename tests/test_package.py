"""The package's shape: the front door, the README's example, one direction of imports, small modules."""
import ast
import re
from pathlib import Path

import numpy as np

import braincorl_lite as bcl

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "braincorl_lite"


def test_front_door_names_exist():
    for name in bcl.__all__:
        assert getattr(bcl, name) is not None, name
    # the module of the training loop is reachable by its own name, not shadowed by bcl.train
    import braincorl_lite.training as training

    assert training.train is bcl.train


def test_readme_example_runs_and_encoders_share_one_orientation():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## In Python\n\n```python\n(.*?)```", text, re.S).group(1)
    assert 'seed=1)' in code
    scope = {}
    exec(code.replace("seed=1)", 'seed=1, size="tiny")'), scope)  # the tiny simulation keeps it fast
    person, W, W_ridge = scope["person"], scope["W"], scope["W_ridge"]
    assert W.shape == W_ridge.shape == (person.n_voxels, person.features.shape[1])
    assert np.isfinite(scope["ev"]).all() and scope["ev"].mean() > 0


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield base, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_the_core_never_imports_the_real_data_subpackage():
    # cli.py is the application on top of both: it registers the real-data commands
    for path in (p for p in PACKAGE.glob("*.py") if p.name != "cli.py"):
        for base, names in _imports(path):
            assert not base.startswith((".nsd", "braincorl_lite.nsd")), f"{path.name} imports {base}"
            assert not (base in (".", "braincorl_lite") and "nsd" in names), f"{path.name} imports nsd"


def test_no_module_is_over_600_lines():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 600} == {}
