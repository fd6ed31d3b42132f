"""Shared fixtures of the core tests: small simulated datasets, generated once per test session.

Loaded as a pytest plugin (``pytest_plugins`` in ``tests/conftest.py``), so tests use the
fixtures by name, without importing them.
"""

from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="session")
def tiny():
    """The ``tiny`` SimNSD: 3 subjects, 300 unique + 100 shared images, ~120 voxels each."""
    from braincorl_lite.simulate import simulate_simnsd

    return simulate_simnsd("tiny")


@pytest.fixture
def rng():
    """A fresh seeded numpy generator for each test."""
    return np.random.default_rng(12345)


@pytest.fixture
def run_notebook(tmp_path):
    """Execute ``notebooks/<name>`` with papermill into ``tmp_path`` and return its recorded values.

    ``run_notebook("03_few_shot_inference.ipynb", fast=True, size="tiny")`` returns the dict of
    :func:`braincorl_lite.notebook.read_records`; the executed copy is ``tmp_path / name``.
    """
    from braincorl_lite.notebook import execute_notebook, read_records

    def run(name, **parameters):
        out = tmp_path / name
        execute_notebook(NOTEBOOKS_DIR / name, out, parameters=parameters, cwd=tmp_path)
        return read_records(out)

    return run
