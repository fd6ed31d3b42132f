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
from .errors import BraInCoRLError, ConfigError

__all__ = ["DATASETS", "RealDataset", "DatasetLayout", "DatasetNotFoundError", "load_dataset",
           "dataset_layout", "prepared_dir", "dataset_label"]

#: names accepted by :func:`load_dataset`
DATASETS = ("simnsd", "simb5k", "nsd")

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


def _sim_config(name: str, size):
    """The :class:`~braincorl_lite.simulate.SimConfig` a simulation of ``size`` uses (nothing is simulated)."""
    from .simulate import SIZES, SimConfig, sim_config

    if not isinstance(size, SimConfig) and size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return sim_config(name, size)


def _npz_shape(path: Path, member: str) -> tuple:
    """Shape of one array of a (compressed) ``.npz`` file, read from its header only."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path) as z, z.open(member + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(fh)[0])


def _prepared_numbers(folder: Path, subjects=None) -> List[int]:
    if subjects is None:
        found = sorted(folder.glob("subj[0-9][0-9].npz"))
        return [int(re.search(r"(\d\d)", p.name).group(1)) for p in found]
    try:
        return [int(s) for s in subjects]
    except (TypeError, ValueError):
        raise ConfigError(f"NSD subjects are numbers 1-8, got {subjects!r}") from None


def _prepared_paths(folder: Path, numbers: Sequence[int]) -> List[Path]:
    paths = [folder / f"subj{n:02d}.npz" for n in numbers]
    missing = [p for p in paths if not p.exists()]
    if not paths or missing:
        what = ", ".join(str(p) for p in missing) if missing else f"no subjNN.npz in {folder}"
        raise DatasetNotFoundError(
            f"prepared NSD data not found ({what}). Prepare them with `braincorl-lite prepare-nsd` "
            "(see the book's 'Running on real NSD' page) or set BRAINCORL_DATA to their root; "
            "use dataset='simnsd' to run on the simulation.")
    return paths


@dataclass(frozen=True)
class DatasetLayout:
    """What a dataset will hold, known without simulating or loading it (see :func:`dataset_layout`).

    Attributes
    ----------
    name : str
        ``"simnsd"``, ``"simb5k"`` or ``"nsd"``.
    numbers : tuple of int
        Subject numbers as the command line and NSD count them (1-based); ``dataset[i]`` is
        subject ``numbers[i]``.
    n_unique, n_shared : tuple of int
        Unique (support) and shared (query) images of each subject.
    n_features : int
        Image embedding size.
    simulated : bool
        Whether the subjects carry ground truth (simulations only).
    """

    name: str
    numbers: tuple
    n_unique: tuple
    n_shared: tuple
    n_features: int
    simulated: bool

    @property
    def label(self) -> str:
        return {"simnsd": "SimNSD", "simb5k": "SimB5K", "nsd": "NSD"}[self.name]

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
    import numpy as np

    name = _name(dataset)
    if name != "nsd":
        import inspect

        from .simulate import World

        config = _sim_config(name, size).with_(**overrides)
        n = config.n_subjects
        return DatasetLayout(name, tuple(range(1, n + 1)), (config.n_unique,) * n, (config.n_shared,) * n,
                             int(inspect.signature(World).parameters["n_features"].default), True)
    folder = prepared_dir(data_dir)
    numbers = _prepared_numbers(folder, subjects)
    paths = _prepared_paths(folder, numbers)
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
        raise ConfigError(f"the prepared subjects in {folder} have different feature sizes {sorted(n_features)}: "
                          "prepare them with the same features")
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
        Size of a simulated dataset (ignored for NSD).
    seed : int
        Subject seed of a simulation: new seeds give new people in the same stimulus world
        (SimB5K adds 5000 to it, its own default, so its people never repeat SimNSD's). Ignored
        for NSD.
    subjects : sequence of int, optional
        1-based NSD subject numbers to load; by default every prepared subject found.
    data_dir : path, optional
        Root of the data cache for NSD (default ``$BRAINCORL_DATA``).
    progress : bool
        Show a progress bar while simulating.
    world_seed : int
        World seed of a simulation (stimulus world and population prior); 0, the default, is the
        world the shipped model was trained in. Ignored for NSD.
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
    name = _name(dataset)
    if name in ("simnsd", "simb5k"):
        from .simulate import simulate_simb5k, simulate_simnsd

        _sim_config(name, size)  # an unknown size fails here, before anything is simulated
        simulate = simulate_simnsd if name == "simnsd" else simulate_simb5k
        subject_seed = int(seed) if name == "simnsd" else SIMB5K_SEED_OFFSET + int(seed)
        return simulate(size, world_seed=int(world_seed), subject_seed=subject_seed, progress=progress,
                        **overrides)
    folder = prepared_dir(data_dir)
    numbers = _prepared_numbers(folder, subjects)
    paths = _prepared_paths(folder, numbers)
    return RealDataset(name="NSD", subjects=[load_subject(p) for p in paths], paths=paths, numbers=numbers)


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
