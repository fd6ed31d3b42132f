"""The book's dataset entry point: simulations on the fly, prepared NSD containers from disk."""

import numpy as np
import pytest

from braincorl_lite.data import save_subject
from braincorl_lite.datasets import RealDataset, dataset_label, load_dataset, prepared_dir


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
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("bold5000")


def test_nsd_loads_prepared_containers(tiny, tmp_path, monkeypatch):
    folder = prepared_dir(tmp_path)
    folder.mkdir(parents=True)
    real = tiny[1].select_voxels(np.arange(20))
    real.truth = None
    real.meta = {"dataset": "nsd", "subject": 2}
    save_subject(real, folder / "subj02.npz")
    monkeypatch.setenv("BRAINCORL_DATA", str(tmp_path))
    ds = load_dataset("nsd")
    assert isinstance(ds, RealDataset) and len(ds) == 1
    assert ds[0].n_voxels == 20 and ds[0].truth is None
    assert ds.summary().voxels.tolist() == [20] and [s.subject for s in ds] == [real.subject]
    assert dataset_label(ds) == "NSD"
    with pytest.raises(ValueError, match="no true prior"):
        ds.subject_prior(0)
    # asking for a subject that is not prepared names the file and the command to make it
    with pytest.raises(FileNotFoundError, match="subj05.npz.*prepare-nsd"):
        load_dataset("nsd", subjects=[2, 5])


def test_nsd_without_any_prepared_subject(tmp_path):
    with pytest.raises(FileNotFoundError, match="no subjNN.npz"):
        load_dataset("nsd", data_dir=tmp_path)


def test_labels_say_simulated(tiny):
    assert dataset_label(tiny) == "SimNSD (simulated data, not NSD)"
    assert dataset_label(tiny[0]) == "SimNSD (simulated data, not NSD)"
    assert "not BOLD5000" in dataset_label(load_dataset("simb5k", size="tiny"))
