"""Test configuration: a non-interactive matplotlib backend and the fixture plugins.

``core_fixtures`` holds the core fixtures (``tiny``, ``rng``, ``run_notebook``), ``conftest_real`` those
of the real-data tests (tiny NSD files, a local server).
"""

import os

os.environ.setdefault("MPLBACKEND", "agg")

pytest_plugins = ["core_fixtures", "conftest_real"]
