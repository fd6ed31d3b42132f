"""The book's dataset entry point: simulations on the fly, prepared NSD containers from disk."""

import numpy as np
import pytest

from braincorl_lite.data import save_subject
from braincorl_lite.datasets import (DatasetNotFoundError, RealDataset, dataset_label, dataset_layout, load_dataset,
                                     prepared_dir)
from braincorl_lite.errors import BraInCoRLError, ConfigError


def test_simnsd_seed_gives_new_people_in_the_same_world():
    a = load_dataset("simnsd", size="tiny", seed=0)
    b = load_dataset("simnsd", size="tiny", seed=1)
    assert a.name == "SimNSD" and len(a) == 3
    # the shared (query) images belong to the world: identical across subject seeds
    np.testing.assert_array_equal(a[0].features[a[0].shared_idx], b[0].features[b[0].shared_idx])
    assert not np.array_equal(a[0].vertex, b[0].vertex)


def test_simb5k_and_unknown_names():
    b5k = load_dataset("SimB5K", size="tiny")
    assert b5k.name == "SimB5K" and b5k[0].n_repeats == 2
    assert b5k.subject_seed == 5000  # its own people, never SimNSD's
    layout = dataset_layout("simb5k", size="tiny")
    assert layout.numbers == tuple(range(1, len(b5k) + 1))
    assert layout.n_unique == tuple(s.unique_idx.size for s in b5k)
    assert layout.n_shared == tuple(s.shared_idx.size for s in b5k) and layout.n_features == b5k[0].n_features
    with pytest.raises(ConfigError, match="unknown dataset"):  # a ValueError too
        load_dataset("bold5000")
    with pytest.raises(ValueError, match="unknown size"):
        load_dataset("simnsd", size="huge")


def test_layout_of_a_simulation_without_simulating(tiny, monkeypatch):
    layout = dataset_layout("simnsd", size="tiny")
    assert layout.simulated and layout.numbers == (1, 2, 3) and layout.position(3) == 2
    assert layout.n_unique == tuple(s.unique_idx.size for s in tiny)
    assert layout.n_shared == tuple(s.shared_idx.size for s in tiny) and layout.n_features == tiny[0].n_features
    assert dataset_layout("simb5k").n_unique[0] == 2000 and len(dataset_layout("simnsd").numbers) == 8
    with pytest.raises(ConfigError, match="no subject 4"):
        layout.position(4)


def test_seeds_reach_the_simulator(monkeypatch):
    import braincorl_lite.simulate as simulate

    calls = []
    monkeypatch.setattr(simulate, "simulate_simnsd", lambda size, **kw: calls.append(("simnsd", size, kw)))
    monkeypatch.setattr(simulate, "simulate_simb5k", lambda size, **kw: calls.append(("simb5k", size, kw)))
    load_dataset("simnsd", size="fast", seed=4, world_seed=2)
    load_dataset("simb5k", size="tiny", seed=4)
    assert calls == [("simnsd", "fast", {"world_seed": 2, "subject_seed": 4, "progress": False}),
                     ("simb5k", "tiny", {"world_seed": 0, "subject_seed": 5004, "progress": False})]


def test_nsd_loads_prepared_containers(tiny, tmp_path, monkeypatch):
    folder = prepared_dir(tmp_path)
    folder.mkdir(parents=True)
    real = tiny[1].select_voxels(np.arange(20))
    real.truth = None
    real.meta = {"dataset": "nsd", "subject": 2}
    save_subject(real, folder / "subj02.npz")
    monkeypatch.setenv("BRAINCORL_DATA", str(tmp_path))
    ds = load_dataset("nsd")
    assert isinstance(ds, RealDataset) and len(ds) == 1 and ds.numbers == [2]
    layout = dataset_layout("nsd")
    assert layout.numbers == (2,) and not layout.simulated and layout.position(2) == 0
    assert layout.n_unique == (real.unique_idx.size,) and layout.n_features == real.n_features
    assert ds[0].n_voxels == 20 and ds[0].truth is None
    assert ds.summary().voxels.tolist() == [20] and [s.subject for s in ds] == [real.subject]
    assert dataset_label(ds) == "NSD"
    with pytest.raises(ValueError, match="no true prior"):
        ds.subject_prior(0)
    # asking for a subject that is not prepared names the file and the command to make it
    with pytest.raises(FileNotFoundError, match="subj05.npz.*prepare-nsd") as err:
        load_dataset("nsd", subjects=[2, 5])
    assert isinstance(err.value, BraInCoRLError)  # the command line prints it as one line
    with pytest.raises(DatasetNotFoundError, match="subj05.npz"):
        dataset_layout("nsd", subjects=[5])


def test_nsd_without_any_prepared_subject(tmp_path):
    with pytest.raises(FileNotFoundError, match="no subjNN.npz"):
        load_dataset("nsd", data_dir=tmp_path)


def test_labels_say_simulated(tiny):
    assert dataset_label(tiny) == "SimNSD (simulated data, not NSD)"
    assert dataset_label(tiny[0]) == "SimNSD (simulated data, not NSD)"
    assert "not BOLD5000" in dataset_label(load_dataset("simb5k", size="tiny"))
