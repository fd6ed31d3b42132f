"""The command-line contract: other tools read `evaluate`'s CSV, so its shape is tested; every bad
argument is refused with one line on stderr, before any expensive work (simulating, loading data,
training)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from braincorl_lite.checkpoint import load_checkpoint
from braincorl_lite.cli import build_parser, main
from braincorl_lite.errors import RunDirError


@pytest.fixture
def no_work(monkeypatch):
    """Make simulating, loading a dataset, training and evaluating fail loudly if the CLI gets there."""
    import braincorl_lite.datasets as datasets
    import braincorl_lite.evaluation as evaluation
    import braincorl_lite.simulate as simulate
    import braincorl_lite.training as train

    def forbidden(*args, **kwargs):
        raise AssertionError("expensive work started before the arguments were checked")

    for module, name in ((datasets, "load_dataset"), (simulate, "simulate_simnsd"), (simulate, "simulate_simb5k"),
                         (train, "train"), (train, "measure_step_time"), (evaluation, "evaluate_heldout"),
                         (evaluation, "simulation_report")):
        monkeypatch.setattr(module, name, forbidden)


def refused(argv, capsys, message, code=1):
    """Run ``argv``; it must exit with ``code`` and exactly one stderr line containing ``message``."""
    if code == 1:
        assert main(argv) == 1
    else:  # usage errors leave through argparse's SystemExit
        assert _exit_code(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"braincorl-lite {argv[0]}: error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err


def _exit_code(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


# ---------------------------------------------------------------------- help and parser
def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("simulate", "train", "evaluate", "fetch", "prepare-nsd", "extract-features"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["simulate", "train", "evaluate"])
def test_help_says_subjects_are_numbered_from_one(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "numbered from 1, as in NSD" in out and "--heldout-subject" in out


def test_evaluate_parser_defaults():
    args = build_parser().parse_args(["evaluate"])
    assert args.dataset == "simnsd" and args.seed == 1 and args.k is None and args.heldout_subject == 1


def test_usage_errors_are_one_line(capsys, no_work):
    refused(["evaluate", "--draws", "abc"], capsys, "invalid int value", code=2)
    refused(["train", "--out", "x", "--dataset", "bold5000"], capsys, "invalid choice", code=2)


# ---------------------------------------------------------------------- bad arguments, refused early
@pytest.mark.parametrize("k, message", [("0", "at least 1, got 0"), ("-5", "at least 1, got -5"),
                                        ("abc", "comma-separated"), ("10,ten", "comma-separated"), (",", "at least one")])
@pytest.mark.parametrize("cmd", [["evaluate"], ["simulate", "--report"]])
def test_bad_k(cmd, k, message, capsys, no_work):
    refused([*cmd, "--size", "tiny", "--k", k], capsys, message)


@pytest.mark.parametrize("cmd", [["evaluate"], ["simulate", "--report"]])
def test_k_larger_than_the_unique_images(cmd, capsys, no_work):
    refused([*cmd, "--size", "tiny", "--k", "10,500"], capsys, "only 300 unique (support) images")
    refused([*cmd, "--dataset", "simb5k", "--size", "fast", "--k", "2000"], capsys, "only 1200 unique")


@pytest.mark.parametrize("cmd", [["evaluate"], ["simulate", "--report"]])
def test_zero_draws(cmd, capsys, no_work):
    refused([*cmd, "--size", "tiny", "--draws", "0"], capsys, "--draws must be at least 1")


@pytest.mark.parametrize("subject, message", [("0", "numbered from 1"), ("-1", "numbered from 1"),
                                              ("4", "there is no subject 4"), ("x", "subject numbers")])
def test_bad_heldout_subject(subject, message, capsys, no_work, tmp_path):
    # 0 and -1 used to evaluate the last subjects (Python indexing) with exit 0; 4 gave an IndexError
    if subject != "x":  # evaluate and simulate parse an int: 'x' is a usage error there
        refused(["evaluate", "--size", "tiny", "--heldout-subject", subject], capsys, message)
        refused(["simulate", "--size", "tiny", "--report", "--heldout-subject", subject], capsys, message)
    refused(["train", "--out", str(tmp_path / "run"), "--size", "tiny", "--k-max", "60",
             "--heldout-subject", f"2,{subject}"], capsys, message)


def test_heldout_everyone_leaves_nothing_to_train(capsys, no_work, tmp_path):
    refused(["train", "--out", str(tmp_path / "run"), "--size", "tiny", "--k-max", "60", "--heldout-subject", "1,2,3"],
            capsys, "leaves no training subject")


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-voxels", "0", "--batch-voxels must be at least 1"),
    ("--steps-scale", "0", "--steps-scale must be positive"),
    ("--steps-scale", "-0.5", "--steps-scale must be positive"),
    ("--time-budget", "-1", "--time-budget must be at least 0"),
    ("--k-max", "0", "--k-max must be at least 1"),
    ("--k-min", "80", "--k-min 80 is larger than --k-max 60"),
    ("--components", "-1", "--components must be at least 0"),
    ("--components", "600", "n_components"),
    ("--heads", "3", "model:"),
])
def test_bad_training_numbers(flag, value, message, capsys, no_work, tmp_path):
    refused(["train", "--out", str(tmp_path / "run"), "--size", "tiny", "--k-max", "60", "--d-model", "32",
             flag, value], capsys, message)
    assert not (tmp_path / "run").exists()


def test_training_support_must_fit_the_image_pool(capsys, no_work, tmp_path):
    # tiny subjects have 300 unique images: stage 3 needs k-max + 200 query images of one subject
    refused(["train", "--out", str(tmp_path / "run"), "--size", "tiny"], capsys, "use --k-max 100 or less")
    # the query loss of stages 1-2 used to crash in stage 2, after the simulation
    refused(["train", "--out", str(tmp_path / "run"), "--size", "tiny", "--loss", "query", "--k-max", "450"],
            capsys, "stage 'pretrain' needs --k-max 450 + 200 query images")


def test_truth_supervision_is_refused_on_real_data(capsys, no_work, tmp_path):
    refused(["train", "--out", str(tmp_path / "run"), "--dataset", "nsd", "--supervision", "truth"], capsys,
            "--supervision truth needs the simulation's ground truth")


def test_outputs_that_cannot_be_written(capsys, no_work, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    refused(["evaluate", "--size", "tiny", "--out", str(tmp_path)], capsys, "is a folder")
    refused(["evaluate", "--size", "tiny", "--out", str(a_file / "results.csv")], capsys, "is a file")
    refused(["train", "--size", "tiny", "--k-max", "60", "--out", str(a_file)], capsys, "not a folder")
    refused(["train", "--size", "tiny", "--k-max", "60", "--out", str(a_file / "run")], capsys, "is a file")
    refused(["simulate", "--size", "tiny", "--out", str(a_file)], capsys, "not a folder")
    refused(["simulate", "--size", "tiny", "--report", "--report-out", str(tmp_path)], capsys, "is a folder")


@pytest.mark.parametrize("cmd", [["evaluate", "--size", "tiny"], ["train", "--size", "tiny", "--k-max", "60"]])
def test_device_without_cuda(cmd, capsys, no_work, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = ["--out", str(tmp_path / "run")] if cmd[0] == "train" else []
    refused([*cmd, *extra, "--device", "cuda"], capsys, "CUDA is not available")
    refused([*cmd, *extra, "--device", "tpu9"], capsys, "is not a device")


def test_missing_checkpoint(capsys, no_work, tmp_path):
    refused(["evaluate", "--size", "tiny", "--checkpoint", str(tmp_path / "nope.safetensors")], capsys, "no such file")
    refused(["evaluate", "--size", "tiny", "--checkpoint", str(tmp_path)], capsys, "is a folder")


def test_damaged_checkpoint_is_one_line(capsys, no_work, tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint")
    refused(["evaluate", "--size", "tiny", "--k", "10", "--checkpoint", str(bad)], capsys, "could not be read")


# ---------------------------------------------------------------------- error policy of main
def test_package_errors_are_one_line_and_programming_errors_keep_their_traceback(capsys, monkeypatch, tmp_path):
    import braincorl_lite.datasets as datasets

    def locked(*args, **kwargs):
        raise RunDirError("the run folder is locked by another process\n(pid 12)")

    monkeypatch.setattr(datasets, "load_dataset", locked)
    refused(["simulate", "--size", "tiny"], capsys, "locked by another process (pid 12)")

    def bug(*args, **kwargs):
        raise ValueError("a programming error")

    monkeypatch.setattr(datasets, "load_dataset", bug)
    with pytest.raises(ValueError, match="a programming error"):
        main(["simulate", "--size", "tiny"])

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "load_dataset", ctrl_c)
    assert main(["train", "--out", str(tmp_path / "run"), "--size", "tiny", "--k-max", "60"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["braincorl-lite train: interrupted; rerun the same command to resume the run"]


# ---------------------------------------------------------------------- datasets come from load_dataset
def test_commands_build_datasets_with_load_dataset(monkeypatch, tmp_path):
    """simulate / train / evaluate pass their seeds to load_dataset (SimB5K's seed offset included)."""
    import braincorl_lite.datasets as datasets

    calls = []

    class Stop(Exception):
        pass

    def spy(dataset, **kwargs):
        calls.append((dataset, kwargs["size"], kwargs["seed"], kwargs["world_seed"]))
        raise Stop

    monkeypatch.setattr(datasets, "load_dataset", spy)
    for argv in (["simulate", "--dataset", "simb5k", "--seed", "3", "--world-seed", "2"],
                 ["train", "--dataset", "simb5k", "--seed", "3", "--world-seed", "2", "--k-max", "60",
                  "--out", str(tmp_path / "run")],
                 ["evaluate", "--dataset", "simb5k", "--seed", "3", "--world-seed", "2"]):
        with pytest.raises(Stop):
            main(argv[:3] + ["--size", "tiny"] + argv[3:])
    assert calls == [("simb5k", "tiny", 3, 2)] * 3


@pytest.mark.slow
def test_simulate_simb5k_saves_the_people_of_load_dataset(tmp_path):
    from braincorl_lite.data import load_subject
    from braincorl_lite.datasets import load_dataset

    assert main(["simulate", "--dataset", "simb5k", "--size", "tiny", "--seed", "2", "--out", str(tmp_path)]) == 0
    ds = load_dataset("simb5k", size="tiny", seed=2)
    assert ds.subject_seed == 5002  # never SimNSD's training people (subject seed 0 or 2)
    files = sorted(tmp_path.glob("*.npz"))
    assert [p.stem for p in files] == [s.subject for s in ds]
    for path, s in zip(files, ds):
        saved = load_subject(path)
        for name in ("features", "betas", "image_ids", "shared_mask", "roi", "vertex", "noise_ceiling"):
            np.testing.assert_array_equal(getattr(saved, name), getattr(s, name), err_msg=name)
        np.testing.assert_array_equal(saved.truth.weights, s.truth.weights)


# ---------------------------------------------------------------------- evaluate's default K
def _fake_subjects(n_unique=300, n_shared=100, n_voxels=6):
    shared = np.r_[np.ones(n_shared, bool), np.zeros(n_unique, bool)]
    return [SimpleNamespace(subject=f"simnsd-0{i + 1}", truth=object(), vertex=np.arange(n_voxels),
                            shared_mask=shared, unique_idx=np.flatnonzero(~shared)) for i in range(3)]


def test_evaluate_default_k_adapts_to_the_subject(monkeypatch, capsys, tmp_path):
    import braincorl_lite.datasets as datasets
    import braincorl_lite.evaluation as evaluation

    class FakeDataset(list):
        name, world, world_seed, subject_seed = "SimNSD", object(), 0, 1

    subjects = _fake_subjects()
    seen = {}

    def fake_evaluate(model, ds, heldout, ks, **kwargs):
        seen.update(heldout=heldout, ks=list(ks), **kwargs)
        return pd.DataFrame([{"method": m, "k": k, "roi": "all", "ev": 0.1, "n_voxels": 6, "draw": 0}
                             for m in ("braincorl", "ridge", "oracle") for k in ks])

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: FakeDataset(subjects))
    monkeypatch.setattr(evaluation, "evaluate_heldout", fake_evaluate)
    csv = tmp_path / "out" / "results.csv"
    assert main(["evaluate", "--size", "tiny", "--heldout-subject", "2", "--out", str(csv)]) == 0
    out = capsys.readouterr().out
    assert seen["ks"] == [10, 30, 100, 300] and seen["heldout"] == 1  # --heldout-subject 2 is position 1 of the Python API
    assert "K = 1000 left out" in out
    table = pd.read_csv(csv)
    assert set(table.subject) == {"simnsd-02"}  # the CSV names the evaluated subject


# ---------------------------------------------------------------------- whole commands
def test_simulate_saves_subjects(tmp_path, capsys):
    assert main(["simulate", "--size", "tiny", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a simulation" in out and "simnsd-01" in out
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["simnsd-01.npz", "simnsd-02.npz", "simnsd-03.npz"]


def test_simulate_report(tmp_path, capsys):
    csv = tmp_path / "report.csv"
    assert main(["simulate", "--size", "tiny", "--report", "--k", "10,30", "--draws", "1",
                 "--report-out", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "a simulation, not NSD" in out and "paper ridge (NSD)" in out and "noise ceiling per ROI" in out
    table = pd.read_csv(csv)
    assert {"ridge", "oracle", "fully_trained", "anatomical"} <= set(table.method)
    assert "braincorl" not in set(table.method)


@pytest.mark.slow
def test_train_then_evaluate_contract(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--size", "tiny", "--steps-scale", "0.005", "--d-model", "32",
                 "--layers", "1", "--heads", "2", "--components", "32", "--batch-voxels", "8",
                 "--k-max", "60", "--threads", "1"]) == 0
    assert (run / "model.safetensors").exists() and (run / "log.jsonl").exists()
    meta = load_checkpoint(run / "model.safetensors")[1]
    assert meta["train_config"]["supervision"] == "measured" and meta["supervision"] == "measured"
    assert meta["heldout_subjects"] == [1] and meta["subject_seed"] == 0
    csv = tmp_path / "results.csv"
    assert main(["evaluate", "--checkpoint", str(run / "model.safetensors"), "--dataset", "simnsd",
                 "--size", "tiny", "--seed", "3", "--heldout-subject", "2", "--k", "10,30",
                 "--draws", "1", "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert {"subject", "method", "k", "roi", "ev", "n_voxels"} <= set(table.columns)
    assert set(table.subject) == {"simnsd-02"}
    assert {"braincorl", "ridge", "oracle", "fully_trained", "anatomical"} <= set(table.method)
    assert "all" in set(table.roi)
    for method in ("braincorl", "ridge", "oracle"):
        assert set(table[(table.method == method) & (table.roi == "all")].k) == {10, 30}
    out = capsys.readouterr().out
    assert "braincorl / oracle" in out
