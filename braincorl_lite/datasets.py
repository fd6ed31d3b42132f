"""One entry point for the book's datasets: SimNSD, SimB5K (simulations) and prepared real NSD.

Every notebook calls :func:`load_dataset` with the ``dataset`` of its parameters cell and then only
sees :class:`~braincorl_lite.data.SubjectData` containers, so it runs unchanged on prepared real NSD.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .data import SubjectCollection, SubjectData, load_subject
from .errors import BraInCoRLError, ConfigError

__all__ = ["DATASETS", "RealDataset", "DatasetLayout", "DatasetNotFoundError", "load_dataset",
           "dataset_layout", "prepared_dir", "dataset_label"]

#: names accepted by :func:`load_dataset`
DATASETS = ("simnsd", "simb5k", "nsd")
_LABELS = {"simnsd": "SimNSD", "simb5k": "SimB5K", "nsd": "NSD"}

#: SimB5K draws its people with subject seed ``SIMB5K_SEED_OFFSET + seed`` (its own default, so
#: that ``seed=0`` never reproduces SimNSD's training people)
SIMB5K_SEED_OFFSET = 5000


class DatasetNotFoundError(BraInCoRLError, FileNotFoundError):
    """Prepared NSD containers that are not where they were looked for."""


@dataclass
class RealDataset(SubjectCollection):
    """Prepared real subjects; the same list-like interface as a simulated dataset, minus ground truth.

    ``world`` and ``prior`` are ``None``: nothing about the generating process is known for real
    data, so analyses that need it (the Bayes oracle, true weights) are skipped.
    """

    name: str
    subjects: List[SubjectData]
    paths: List[Path] = field(default_factory=list)
    numbers: List[int] = field(default_factory=list)  # NSD subject numbers (1-based), one per subject
    world = None
    prior = None

    def subject_prior(self, i: int):
        raise ConfigError(f"{self.name} is real data: there is no true prior (the Bayes oracle needs a simulation)")


def prepared_dir(data_dir=None) -> Path:
    """Folder of prepared NSD containers: ``<data_dir or $BRAINCORL_DATA or ~/.cache/braincorl_lite>/prepared``."""
    if data_dir is None:
        data_dir = os.environ.get("BRAINCORL_DATA") or Path.home() / ".cache" / "braincorl_lite"
    return Path(data_dir).expanduser() / "prepared"


def _name(dataset) -> str:
    name = str(dataset).lower()
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return name


def _prepared_paths(data_dir, subjects) -> tuple:
    """NSD subject numbers and their prepared container files; ``DatasetNotFoundError`` if any is missing."""
    folder = prepared_dir(data_dir)
    if subjects is None:
        numbers = [int(re.search(r"(\d\d)", p.name).group(1)) for p in sorted(folder.glob("subj[0-9][0-9].npz"))]
    else:
        try:
            numbers = [int(s) for s in subjects]
        except (TypeError, ValueError):
            raise ConfigError(f"NSD subjects are numbers 1-8, got {subjects!r}") from None
    paths = [folder / f"subj{n:02d}.npz" for n in numbers]
    missing = [p for p in paths if not p.exists()]
    if not paths or missing:
        what = ", ".join(str(p) for p in missing) if missing else f"no subjNN.npz in {folder}"
        raise DatasetNotFoundError(
            f"prepared NSD data not found ({what}). Prepare them with `braincorl-lite prepare-nsd` "
            "(see the book's 'Running on real NSD' page) or set BRAINCORL_DATA to their root; "
            "use dataset='simnsd' to run on the simulation.")
    return numbers, paths


def _npz_shape(path: Path, member: str) -> tuple:
    """Shape of one array of a (compressed) ``.npz`` file, read from its header only."""
    import zipfile

    with zipfile.ZipFile(path) as z, z.open(member + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(fh)[0])


@dataclass(frozen=True)
class DatasetLayout:
    """What a dataset will hold, known without simulating or loading it (see :func:`dataset_layout`).

    ``numbers`` are the subject numbers as the command line and NSD count them (1-based):
    ``dataset[i]`` is subject ``numbers[i]``. ``n_unique`` and ``n_shared`` give each subject's
    unique (support) and shared (query) images; ``simulated`` says whether there is ground truth.
    """

    name: str
    numbers: tuple
    n_unique: tuple
    n_shared: tuple
    n_features: int
    simulated: bool

    @property
    def label(self) -> str:
        return _LABELS[self.name]

    def position(self, number: int) -> int:
        """0-based position in the dataset of subject ``number`` (1-based); ``ConfigError`` if absent."""
        try:
            return self.numbers.index(int(number))
        except ValueError:
            have = ", ".join(str(n) for n in self.numbers)
            raise ConfigError(f"there is no subject {number} in {self.label} (its subjects are numbered "
                              f"{have}, from 1 as in NSD)") from None


def dataset_layout(dataset: str = "simnsd", size: str = "default", subjects: Optional[Sequence[int]] = None,
                   data_dir=None, **overrides) -> DatasetLayout:
    """Subjects, image counts and feature size of a dataset, without simulating or loading it.

    Takes the arguments of :func:`load_dataset` (seeds do not change the layout). For a
    simulation the sizes come from its :class:`~braincorl_lite.simulate.SimConfig`; for NSD from
    the headers of the prepared containers (their responses are not read). Lets a caller check
    support sizes and subject numbers before any expensive work.

    >>> layout = dataset_layout("simnsd", size="tiny")
    >>> layout.numbers, layout.n_unique[0], layout.n_features
    ((1, 2, 3), 300, 512)
    """
    name = _name(dataset)
    if name != "nsd":
        from .simulate import N_FEATURES, sim_config

        config = sim_config(name, size).with_(**overrides)
        n = config.n_subjects
        return DatasetLayout(name, tuple(range(1, n + 1)), (config.n_unique,) * n, (config.n_shared,) * n,
                             N_FEATURES, True)
    numbers, paths = _prepared_paths(data_dir, subjects)
    n_unique, n_shared, n_features = [], [], set()
    for p in paths:
        try:
            with np.load(p, allow_pickle=False) as f:
                shared = np.asarray(f["shared_mask"], bool)
            n_features.add(_npz_shape(p, "features")[1])
        except (OSError, KeyError, ValueError, IndexError) as err:
            raise ConfigError(f"{p} is not a prepared subject container ({err}); prepare it again with "
                              "`braincorl-lite prepare-nsd`") from None
        n_unique.append(int((~shared).sum()))
        n_shared.append(int(shared.sum()))
    if len(n_features) > 1:
        raise ConfigError(f"the prepared subjects in {prepared_dir(data_dir)} have different feature sizes "
                          f"{sorted(n_features)}: prepare them with the same features")
    return DatasetLayout(name, tuple(numbers), tuple(n_unique), tuple(n_shared), n_features.pop(), False)


def load_dataset(dataset: str = "simnsd", size: str = "default", seed: int = 0,
                 subjects: Optional[Sequence[int]] = None, data_dir=None, progress: bool = False,
                 world_seed: int = 0, **overrides):
    """Load the dataset a notebook runs on.

    Parameters
    ----------
    dataset : {"simnsd", "simb5k", "nsd"}
        ``"simnsd"`` and ``"simb5k"`` are generated on the fly (simulations, no download);
        ``"nsd"`` loads ``prepared/subjNN.npz`` files written by ``braincorl-lite prepare-nsd``.
    size : {"default", "fast", "tiny"}
        Size of a simulated dataset.
    seed : int
        Subject seed of a simulation: new seeds give new people in the same stimulus world
        (SimB5K adds 5000 to it, so its people never repeat SimNSD's).
    subjects : sequence of int, optional
        1-based NSD subject numbers to load; by default every prepared subject found.
    data_dir : path, optional
        Root of the data cache for NSD (default ``$BRAINCORL_DATA``).
    progress : bool
        Show a progress bar while simulating.
    world_seed : int
        World seed of a simulation (stimulus world and population prior); 0 is the shipped model's.
    **overrides
        :class:`~braincorl_lite.simulate.SimConfig` fields for a simulation (NSD ignores the
        simulation arguments).

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
    name = _name(dataset)
    if name == "nsd":
        numbers, paths = _prepared_paths(data_dir, subjects)
        return RealDataset(name="NSD", subjects=[load_subject(p) for p in paths], paths=paths, numbers=numbers)
    from . import simulate

    simulate.sim_config(name, size)  # an unknown size fails here, before anything is simulated
    if name == "simnsd":
        return simulate.simulate_simnsd(size, world_seed=int(world_seed), subject_seed=int(seed),
                                        progress=progress, **overrides)
    return simulate.simulate_simb5k(size, world_seed=int(world_seed), subject_seed=SIMB5K_SEED_OFFSET + int(seed),
                                    progress=progress, **overrides)


def dataset_label(data) -> str:
    """A short label for figure titles that says whether the data are simulated.

    ``data`` is a dataset or a :class:`~braincorl_lite.data.SubjectData`.

    >>> dataset_label(load_dataset("simnsd", size="tiny"))
    'SimNSD (simulated data, not NSD)'
    """
    subjects = [data] if isinstance(data, SubjectData) else list(data)
    name = str(getattr(data, "name", None) or subjects[0].meta.get("dataset", "data"))
    if any(s.is_simulated for s in subjects):
        real = {"simnsd": "NSD", "simb5k": "BOLD5000"}.get(name.lower(), "real data")
        return f"{_LABELS.get(name.lower(), name)} (simulated data, not {real})"
    return name
