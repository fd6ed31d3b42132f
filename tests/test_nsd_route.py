"""Real NSD end to end on the command line: prepare-nsd -> train -> evaluate.

Runs on tiny trees in NSD's exact file formats (``conftest_real.make_nsd_tree``): two subjects
are prepared into ``DATA/prepared/subjNN.npz``, a tiny model is meta-trained holding out subj01
(by its NSD number), and evaluated on it. Real data have no ground truth: the oracle must be
skipped, and the output must say so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from braincorl_lite.checkpoint import load_checkpoint
from braincorl_lite.cli import main
from braincorl_lite.datasets import dataset_layout, load_dataset
from conftest_real import make_nsd_tree

pytestmark = pytest.mark.slow

SUBJECTS = (1, 2)
TINY_MODEL = ["--d-model", "16", "--layers", "1", "--heads", "2", "--components", "8", "--tokens", "xy"]


@pytest.fixture(scope="module")
def nsd_data(tmp_path_factory):
    """Data root with prepared/subj01.npz and prepared/subj02.npz made by ``braincorl-lite prepare-nsd``."""
    root = tmp_path_factory.mktemp("nsd_route")
    nsd, data = root / "nsd", root / "data"
    for n in SUBJECTS:
        tree = make_nsd_tree(nsd, subject=n)
        assert main(["prepare-nsd", "--subject", str(n), "--features", str(tree.features),
                     "--out", str(data / "prepared" / f"subj{n:02d}.npz"), "--sessions", "1-3",
                     "--nsd-root", str(nsd), "--no-verify", "--no-progress"]) == 0
    return data


def test_prepared_layout(nsd_data):
    layout = dataset_layout("nsd", data_dir=nsd_data)
    ds = load_dataset("nsd", data_dir=nsd_data)
    assert layout.numbers == (1, 2) and ds.numbers == [1, 2] and not layout.simulated
    assert layout.n_unique == tuple(s.unique_idx.size for s in ds)
    assert layout.n_features == ds[0].features.shape[1] == 8


def test_train_then_evaluate_on_prepared_nsd(nsd_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "nsd", "--data", str(nsd_data), "--out", str(run), "--heldout-subject", "1",
                 "--steps-scale", "0.004", "--batch-voxels", "8", "--k-max", "40", "--k-min", "5",
                 "--threads", "1", *TINY_MODEL]) == 0
    out = capsys.readouterr().out
    assert "subj02" in out and "holding out subject(s) [1]" in out
    meta = load_checkpoint(run / "model.safetensors")[1]
    assert meta["dataset"] == "nsd" and meta["heldout_subjects"] == [1] and meta["train_subjects"] == ["subj02"]
    assert meta["supervision"] == "measured" and meta["train_config"]["supervision"] == "measured"

    csv = tmp_path / "eval" / "results.csv"
    assert main(["evaluate", "--dataset", "nsd", "--data", str(nsd_data), "--checkpoint", str(run / "model.safetensors"),
                 "--heldout-subject", "1", "--k", "10,40", "--draws", "1", "--out", str(csv)]) == 0
    captured = capsys.readouterr()
    # nothing that needs ground truth is silently missing: the output says what was skipped and why
    assert "oracle: skipped" in captured.out and "anatomical: skipped" in captured.out
    assert "subj01" in captured.out and "real data" in captured.out
    assert "TRAINING subject" not in captured.err
    table = pd.read_csv(csv)
    assert {"braincorl", "ridge", "fully_trained"} <= set(table.method)
    assert not {"oracle", "anatomical"} & set(table.method)
    assert set(table.subject) == {"subj01"}
    assert set(table[table.method == "braincorl"].k) == {10, 40}
    assert np.isfinite(table.ev).all()

    # evaluating a subject the checkpoint was trained on works, with a warning
    assert main(["evaluate", "--dataset", "nsd", "--data", str(nsd_data), "--checkpoint", str(run / "model.safetensors"),
                 "--heldout-subject", "2", "--k", "10", "--draws", "1", "--no-anatomical"]) == 0
    assert "subj02 was a TRAINING subject" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--supervision", "truth"], "--supervision truth needs the simulation's ground truth"),
    (["train", "--heldout-subject", "3"], "--heldout-subject 3: there is no subject 3 in NSD (its subjects are numbered 1, 2"),
    (["train", "--heldout-subject", "1,2"], "leaves no training subject"),
    (["train", "--k-max", "2000"], "use --k-max"),
    (["train", "--components", "64"], "n_components"),
    (["evaluate", "--heldout-subject", "3"], "subj03.npz"),
    (["evaluate", "--k", "5000"], "unique (support) images"),
])
def test_nsd_route_errors_are_one_line(nsd_data, tmp_path, capsys, monkeypatch, argv, message):
    import braincorl_lite.datasets as datasets

    def no_loading(*a, **k):
        raise AssertionError("the arguments should have been refused before loading the data")

    monkeypatch.setattr(datasets, "load_dataset", no_loading)
    extra = ["--out", str(tmp_path / "run"), *TINY_MODEL] if argv[0] == "train" else []
    # the arguments under test come last, so they override the tiny model's
    assert main([argv[0], "--dataset", "nsd", "--data", str(nsd_data), *extra, *argv[1:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"braincorl-lite {argv[0]}: error:") and message in err[0], err
