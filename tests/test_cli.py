"""The command-line contract: other tools read `evaluate`'s CSV, so its shape is tested."""

import pandas as pd
import pytest

from braincorl_lite.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("simulate", "train", "evaluate", "fetch", "prepare-nsd", "extract-features"):
        assert cmd in out


def test_bad_k_is_a_clear_error():
    with pytest.raises(SystemExit, match="comma-separated"):
        main(["simulate", "--size", "tiny", "--report", "--k", "ten"])


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
    assert set(table.method) == {"ridge", "oracle", "fully_trained", "anatomical"}


@pytest.mark.slow
def test_train_then_evaluate_contract(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--size", "tiny", "--steps-scale", "0.005", "--d-model", "32",
                 "--layers", "1", "--heads", "2", "--components", "32", "--batch-voxels", "8",
                 "--k-max", "60", "--threads", "1"]) == 0
    assert (run / "model.safetensors").exists() and (run / "log.jsonl").exists()
    csv = tmp_path / "results.csv"
    assert main(["evaluate", "--checkpoint", str(run / "model.safetensors"), "--dataset", "simnsd",
                 "--size", "tiny", "--seed", "3", "--heldout-subject", "2", "--k", "10,30",
                 "--draws", "1", "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert {"method", "k", "roi", "ev", "n_voxels"} <= set(table.columns)
    assert set(table.method) == {"braincorl", "ridge", "oracle", "fully_trained", "anatomical"}
    assert "all" in set(table.roi)
    for method in ("braincorl", "ridge", "oracle"):
        assert set(table[(table.method == method) & (table.roi == "all")].k) == {10, 30}
    out = capsys.readouterr().out
    assert "braincorl / oracle" in out


def test_evaluate_parser_defaults():
    args = build_parser().parse_args(["evaluate"])
    assert args.dataset == "simnsd" and args.seed == 1 and args.k == "10,30,100,300,1000"
