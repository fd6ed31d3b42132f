"""One entry point for the book's datasets: SimNSD, SimB5K (simulations) and prepared real NSD.

Every notebook starts with ``dataset = "simnsd"`` in its parameters cell and calls
:func:`load_dataset`; the rest of the notebook only sees a list of
:class:`~braincorl_lite.data.SubjectData` containers, so it runs unchanged on real NSD once the
containers have been prepared (see the book's "Running on real NSD" page).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from .data import SubjectCollection, SubjectData, load_subject

__all__ = ["DATASETS", "RealDataset", "load_dataset", "prepared_dir", "dataset_label"]

#: names accepted by :func:`load_dataset`
DATASETS = ("simnsd", "simb5k", "nsd")


@dataclass
class RealDataset(SubjectCollection):
    """Prepared real subjects; the same list-like interface as a simulated dataset, minus ground truth.

    ``world`` and ``prior`` are ``None``: nothing about the generating process is known for real
    data, so analyses that need it (the Bayes oracle, true weights) are skipped.
    """

    name: str
    subjects: List[SubjectData]
    paths: List[Path] = field(default_factory=list)
    world = None
    prior = None

    def subject_prior(self, i: int):
        raise ValueError(f"{self.name} is real data: there is no true prior (the Bayes oracle needs a simulation)")


def prepared_dir(data_dir=None) -> Path:
    """Folder of prepared NSD containers: ``<data_dir or $BRAINCORL_DATA or ~/.cache/braincorl_lite>/prepared``."""
    if data_dir is None:
        data_dir = os.environ.get("BRAINCORL_DATA") or Path.home() / ".cache" / "braincorl_lite"
    return Path(data_dir).expanduser() / "prepared"


def load_dataset(dataset: str = "simnsd", size: str = "default", seed: int = 0,
                 subjects: Optional[Sequence[int]] = None, data_dir=None, progress: bool = False,
                 **overrides):
    """Load the dataset a notebook runs on.

    Parameters
    ----------
    dataset : {"simnsd", "simb5k", "nsd"}
        ``"simnsd"`` and ``"simb5k"`` are generated on the fly (simulations, no download);
        ``"nsd"`` loads ``prepared/subjNN.npz`` files written by ``braincorl-lite prepare-nsd``.
    size : {"default", "fast", "tiny"}
        Size of a simulated dataset (ignored for NSD).
    seed : int
        Subject seed of a simulation: new seeds give new people in the same stimulus world (the
        world seed stays 0, the world the shipped model was trained in; SimB5K adds 5000 to it,
        its own default). Ignored for NSD.
    subjects : sequence of int, optional
        1-based NSD subject numbers to load; by default every prepared subject found.
    data_dir : path, optional
        Root of the data cache for NSD (default ``$BRAINCORL_DATA``).
    progress : bool
        Show a progress bar while simulating.
    **overrides
        :class:`~braincorl_lite.simulate.SimConfig` fields for a simulation.

    Returns
    -------
    SimDataset or RealDataset
        ``ds[i]`` is the i-th subject (0-based) as a :class:`~braincorl_lite.data.SubjectData`.

    Examples
    --------
    >>> ds = load_dataset("simnsd", size="tiny")
    >>> ds.name, len(ds)
    ('SimNSD', 3)
    """
    name = str(dataset).lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if name in ("simnsd", "simb5k"):
        from .simulate import simulate_simb5k, simulate_simnsd

        simulate = simulate_simnsd if name == "simnsd" else simulate_simb5k
        subject_seed = int(seed) if name == "simnsd" else 5000 + int(seed)
        return simulate(size, subject_seed=subject_seed, progress=progress, **overrides)
    folder = prepared_dir(data_dir)
    if subjects is None:
        found = sorted(folder.glob("subj[0-9][0-9].npz"))
        numbers = [int(re.search(r"(\d\d)", p.name).group(1)) for p in found]
    else:
        numbers = [int(s) for s in subjects]
    paths = [folder / f"subj{n:02d}.npz" for n in numbers]
    missing = [p for p in paths if not p.exists()]
    if not paths or missing:
        what = ", ".join(str(p) for p in missing) if missing else f"no subjNN.npz in {folder}"
        raise FileNotFoundError(
            f"prepared NSD data not found ({what}). Prepare them with `braincorl-lite prepare-nsd` "
            "(see the book's 'Running on real NSD' page) or set BRAINCORL_DATA to their root; "
            "use dataset='simnsd' to run on the simulation.")
    return RealDataset(name="NSD", subjects=[load_subject(p) for p in paths], paths=paths)


def dataset_label(data) -> str:
    """A short label for figure titles that says whether the data are simulated.

    ``data`` is a dataset or a :class:`~braincorl_lite.data.SubjectData`.

    >>> dataset_label(load_dataset("simnsd", size="tiny"))
    'SimNSD (simulated data, not NSD)'
    """
    subjects = list(data) if not isinstance(data, SubjectData) else [data]
    name = getattr(data, "name", None) or subjects[0].meta.get("dataset", "data")
    if any(s.is_simulated for s in subjects):
        real = {"simnsd": "NSD", "simb5k": "BOLD5000"}.get(str(name).lower(), "real data")
        pretty = {"simnsd": "SimNSD", "simb5k": "SimB5K"}.get(str(name).lower(), str(name))
        return f"{pretty} (simulated data, not {real})"
    return str(name)
