"""Shared fixtures: small simulated datasets, generated once per test session."""

import os

os.environ.setdefault("MPLBACKEND", "agg")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny():
    """The ``tiny`` SimNSD: 3 subjects, 300 unique + 100 shared images, ~120 voxels each."""
    from braincorl_lite.simulate import simulate_simnsd

    return simulate_simnsd("tiny")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
