"""Crash-safe training runs: whatever stops a run, rerunning it ends exactly where one uninterrupted run ends.

Every test trains the same tiny run (13 steps in three stages) and compares the weights and the
log with one uninterrupted run of it (the ``reference`` fixture), bit for bit.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from braincorl_lite.errors import ConfigError, NonFiniteError, RunDirError
from braincorl_lite.checkpoint import load_checkpoint
from braincorl_lite.model import ModelConfig
from braincorl_lite.training import StageConfig, TrainConfig, default_stages, train

import braincorl_lite.training as train_mod
SMALL = ModelConfig.lite(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, token_features="concat_xy").to_dict()
STEPS = 13


def _config(checkpoint_every=1, **kw):
    # checkpoint_every does not change what is trained: all configs here train the same run
    return TrainConfig(model=SMALL, n_components=16, checkpoint_every=checkpoint_every, **kw,
                       stages=[StageConfig("pretrain", 6, k_min=10, k_max=30, batch_voxels=8),
                               StageConfig("extend", 4, k_min=5, k_max=30, batch_voxels=8),
                               StageConfig("finetune", 3, k_min=5, k_max=30, n_query=20, batch_voxels=8)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: these tiny runs are fastest so, and do not fight other processes for cores."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def subjects(tiny):
    return list(tiny)[1:]


@pytest.fixture(scope="module")
def run(subjects):
    """``run(folder, **kw)``: train the tiny run into ``folder``."""
    # any encoders do for the synthetic prior: the true ones spare the ridge fits of the measured prior
    reference = [(s.truth.weights, s.truth.bias) for s in subjects]

    def go(folder, config=None, **kw):
        return train(subjects, folder, _config() if config is None else config, device="cpu",
                     progress=False, reference=reference, **kw)

    return go


def _log(folder):
    """The log's entries without their clock times (strict JSON: a bare NaN fails)."""
    def no_nan(name):
        raise AssertionError(f"the log holds a bare {name}")

    lines = (folder / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line, parse_constant=no_nan).items() if k != "seconds"} for line in lines]


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "run"
    model = run(folder)
    return {name: t.clone() for name, t in model.state_dict().items()}, _log(folder)


def _assert_like_reference(folder, reference):
    weights, log = reference
    model, meta = load_checkpoint(folder / "model.safetensors")
    assert (meta["stage"], meta["step"]) == (3, 0)
    for name, t in model.state_dict().items():
        assert torch.equal(t, weights[name]), name
    assert _log(folder) == log  # every step exactly once, with the same values
    assert len(log) == STEPS and len({(r["stage"], r["step"]) for r in log}) == STEPS


def _position(folder):
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    return state["stage"], state["step"]


# --------------------------------------------------------------------------------------------
# Kills while a checkpoint is written
# --------------------------------------------------------------------------------------------
class Kill(BaseException):
    """A kill at a chosen moment (a BaseException: no ``except Exception`` can stop it)."""


class Writes:
    """Counts the file writes of checkpointing and kills the run at write number ``at`` (0-based).

    ``mode="before"``: the kill comes just before that write; ``"torn"``: after half of the file
    is written (or, for a rename, just after the rename).
    """

    def __init__(self, monkeypatch, at=None, mode="before", on_replace=None):
        self.names, self.at, self.mode, self.on_replace = [], at, mode, on_replace
        torch_save, save_file, replace = torch.save, safetensors.torch.save_file, os.replace

        def torch_save_(obj, f, *args, **kw):
            self._op("torch.save", lambda: torch_save(obj, f, *args, **kw),
                     lambda: (f.flush(), f.truncate(f.tell() // 2)))

        def save_file_(tensors, filename, *args, **kw):
            self._op("save_file", lambda: save_file(tensors, filename, *args, **kw),
                     lambda: os.truncate(filename, os.path.getsize(filename) // 2))

        def replace_(src, dst):
            if self.on_replace is not None:
                self.on_replace(src, dst)
            self._op("replace", lambda: replace(src, dst), lambda: None)

        monkeypatch.setattr(torch, "save", torch_save_)
        monkeypatch.setattr(safetensors.torch, "save_file", save_file_)
        monkeypatch.setattr(os, "replace", replace_)

    def _op(self, name, do, tear):
        self.names.append(name)
        if len(self.names) - 1 != self.at:
            return do()
        if self.mode == "torn":
            do()
            tear()
        raise Kill(f"killed at write {self.at} ({name}, {self.mode})")


def test_kills_inside_and_between_the_writes_of_a_checkpoint(run, reference, tmp_path, monkeypatch):
    # how many writes one checkpoint makes (one checkpoint per step here)
    with monkeypatch.context() as m:
        counted = Writes(m)
        run(tmp_path / "count")
    per_save = len(counted.names) // STEPS
    assert per_save >= 2 and len(counted.names) == per_save * STEPS and counted.names.count("torch.save") == STEPS

    # a kill before, and in the middle of, every write of a checkpoint: the first attempt dies in
    # the run's first checkpoint, each later one in the second checkpoint that it writes
    folder = tmp_path / "run"
    plan = [(j, mode) for j in range(per_save) for mode in ("before", "torn")]
    assert len(plan) + 1 < STEPS  # every attempt still has a checkpoint to die in
    for i, (j, mode) in enumerate(plan):
        with monkeypatch.context() as m:
            Writes(m, at=j if i == 0 else per_save + j, mode=mode)
            with pytest.raises(Kill):
                run(folder)
    run(folder)
    _assert_like_reference(folder, reference)


def test_every_logged_step_is_on_disk_before_its_checkpoint(run, tmp_path, monkeypatch):
    # a kill right after any commit (end of a stage included) must not lose log lines: at each
    # commit, the log on disk already holds every step of the checkpoint
    folder = tmp_path / "run"
    seen = []

    def check(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            state = torch.load(src, weights_only=True)
            done = sum(s.steps for s in _config().stages[:state["stage"]]) + state["step"]
            on_disk = (folder / "log.jsonl").read_bytes()
            assert on_disk.count(b"\n") == done and on_disk.endswith(b"\n"), (state["stage"], state["step"])
            seen.append((state["stage"], state["step"]))

    Writes(monkeypatch, on_replace=check)
    run(folder, config=_config(checkpoint_every=4))
    assert seen == [(0, 4), (1, 0), (2, 0), (3, 0)]


def test_a_resume_cuts_the_log_back_to_the_checkpoint(run, reference, tmp_path):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=5)
    lines = (folder / "log.jsonl").read_text().splitlines()
    # steps logged after the checkpoint by a run that then died, the last one torn
    with open(folder / "log.jsonl", "a") as fh:
        fh.write(lines[-1] + "\n" + lines[-2] + "\n" + '{"stage": "pretr')
    run(folder)
    _assert_like_reference(folder, reference)


@pytest.mark.slow
def test_sigkill_at_random_moments(subjects, tmp_path):
    """Real kills (SIGKILL) of a training process at random moments, then reruns until it finishes."""
    import random

    from braincorl_lite.data import save_subject

    for s in subjects:
        save_subject(s, tmp_path / "data" / f"{s.subject}.npz")
    (tmp_path / "config.json").write_text(json.dumps(_config(checkpoint_every=2).to_dict()))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import torch
        from braincorl_lite.data import load_subject
        from braincorl_lite.training import TrainConfig, train
        torch.set_num_threads(1)
        subjects = [load_subject(p) for p in sorted(Path({str(tmp_path / "data")!r}).glob("*.npz"))]
        config = TrainConfig(**json.loads(Path({str(tmp_path / "config.json")!r}).read_text()))
        train(subjects, sys.argv[1], config, device="cpu", progress=False,
              reference=[(s.truth.weights, s.truth.bias) for s in subjects])
        print("DONE")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def child(folder):
        return subprocess.Popen([sys.executable, str(script), str(folder)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    import time

    t0 = time.perf_counter()
    p = child(tmp_path / "whole")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    whole = time.perf_counter() - t0

    folder, kills, rand = tmp_path / "killed", 0, random.Random(0)
    for _ in range(30):
        p = child(folder)
        try:
            out, err = p.communicate(timeout=rand.uniform(0.2, 0.8) * whole if kills < 6 else 600)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.communicate()
            kills += 1
            continue
        assert p.returncode == 0, err[-2000:]
        break
    assert kills >= 1 and "DONE" in out
    weights = {n: t.clone() for n, t in load_checkpoint(tmp_path / "whole" / "model.safetensors")[0].state_dict().items()}
    _assert_like_reference(folder, (weights, _log(tmp_path / "whole")))


# --------------------------------------------------------------------------------------------
# The run folder's checkpoint
# --------------------------------------------------------------------------------------------
def test_the_run_folder_holds_one_resume_file(run, tmp_path):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=3)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "log.jsonl",
                                                         "model.safetensors", "train.lock"]
    state = torch.load(folder / "checkpoint.pt", weights_only=True)  # no pickled code
    assert (state["stage"], state["step"]) == (0, 3)
    assert {"model", "optimizer", "rng", "train_config"} <= set(state)
    assert load_checkpoint(folder / "model.safetensors")[1]["step"] == 3  # the model users load


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_checkpoint_is_a_one_line_run_dir_error(run, tmp_path, damage):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=2)
    path = folder / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"{not a checkpoint" * 50, "empty": b""}[damage])
    with pytest.raises(RunDirError, match="damaged") as err:
        run(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_a_checkpoint_whose_parts_disagree_is_refused(run, tmp_path):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=4)
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    state["step"] = 2  # the weights and the optimiser are 4 steps on
    torch.save(state, folder / "checkpoint.pt")
    with pytest.raises(RunDirError, match="inconsistent"):
        run(folder)


# --------------------------------------------------------------------------------------------
# One run per folder, with one recipe
# --------------------------------------------------------------------------------------------
def test_a_second_run_into_a_locked_folder_is_refused(run, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    folder = tmp_path / "run"
    run(folder, stop_after_steps=2)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    fd = os.open(folder / "train.lock", os.O_RDWR)  # another run holds the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, b"4242\n")
        for resume in (True, False):
            with pytest.raises(RunDirError, match=rf"{re.escape(str(folder))} is in use .*PID 4242"):
                run(folder, resume=resume)
    finally:
        os.close(fd)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.name != "train.lock") == \
        [x for x in before if x[0] != "train.lock"]  # untouched, even with resume=False


def test_a_stale_lock_is_taken_over(run, reference, tmp_path):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=2)
    (folder / "train.lock").write_text("999999999\n")  # left by a killed run: nobody holds it
    run(folder)
    _assert_like_reference(folder, reference)


def test_another_recipe_is_refused_and_named(run, subjects, reference, tmp_path):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=3)
    other = _config(seed=7)
    other.stages[1].lr = 0.5
    with pytest.raises(RunDirError, match=r"another recipe.*stages\[1\]\.lr: 0\.001 -> 0\.5.*seed: 0 -> 7.*resume=False"):
        run(folder, config=other)
    with pytest.raises(RunDirError, match="other data"):
        train(subjects[:1], folder, _config(), device="cpu", progress=False,
              reference=[(subjects[0].truth.weights, subjects[0].truth.bias)])
    with pytest.raises(RunDirError, match=r"checkpoint_every: 1 -> 5"):  # the whole TrainConfig is the recipe
        run(folder, config=_config(checkpoint_every=5))
    assert _position(folder) == (0, 3)  # nothing was touched
    run(folder)
    _assert_like_reference(folder, reference)


def test_no_config_resumes_the_runs_own_recipe_and_resume_false_starts_over(run, subjects, reference, tmp_path):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=3)
    train(subjects, folder, None, device="cpu", progress=False,
          reference=[(s.truth.weights, s.truth.bias) for s in subjects])
    _assert_like_reference(folder, reference)
    run(folder, config=_config(seed=7), resume=False, stop_after_steps=1)
    assert _position(folder) == (0, 1) and len(_log(folder)) == 1


def test_a_finished_run_says_so_and_trains_nothing(run, reference, tmp_path, capsys):
    folder = tmp_path / "run"
    run(folder)
    stamp = (folder / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    model = run(folder)
    assert "finished run" in capsys.readouterr().out
    assert (folder / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert all(torch.equal(t, reference[0][n]) for n, t in model.state_dict().items())


# --------------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------------
def _ctrl_c_at(monkeypatch, call, times=1):
    """Press Ctrl-C ``times`` times during the ``call``-th loss evaluation (1-based)."""
    calls, real = [0], train_mod.population_loss

    def loss(*args):
        calls[0] += 1
        if calls[0] == call:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(train_mod, "population_loss", loss)


def test_ctrl_c_saves_at_the_end_of_the_step_and_resumes(run, reference, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as m:
        _ctrl_c_at(m, call=3)
        with pytest.raises(KeyboardInterrupt, match="saved at stage 1 step 3"):
            run(folder, config=_config(checkpoint_every=100))
    assert signal.getsignal(signal.SIGINT) is handler
    assert _position(folder) == (0, 3) and len(_log(folder)) == 3
    run(folder, config=_config(checkpoint_every=100))
    _assert_like_reference(folder, reference)


def test_a_second_ctrl_c_stops_at_once_without_claiming_a_save(run, reference, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    run(folder, config=_config(checkpoint_every=4), stop_after_steps=4)
    with monkeypatch.context() as m:
        _ctrl_c_at(m, call=2, times=2)
        with pytest.raises(KeyboardInterrupt) as err:
            run(folder, config=_config(checkpoint_every=4))
    assert "without saving" in str(err.value) and "saved at" not in str(err.value)
    assert _position(folder) == (0, 4)
    run(folder, config=_config(checkpoint_every=4))
    _assert_like_reference(folder, reference)


# --------------------------------------------------------------------------------------------
# Numbers are finite or the run stops
# --------------------------------------------------------------------------------------------
def test_a_non_finite_loss_stops_without_saving_it(run, reference, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    calls, real = [0], train_mod.population_loss

    def loss(*args):
        calls[0] += 1
        out = real(*args)
        return out * float("nan") if calls[0] == 8 else out

    with monkeypatch.context() as m:
        m.setattr(train_mod, "population_loss", loss)
        with pytest.raises(NonFiniteError, match=r"nan at stage 2 \(extend\) step 1"):
            run(folder)
    assert _position(folder) == (1, 1)  # the last good step
    assert len(_log(folder)) == 7  # valid JSON, no NaN
    run(folder)  # the good checkpoint resumes as if nothing happened
    _assert_like_reference(folder, reference)


@pytest.mark.parametrize("make", [
    lambda: StageConfig("pretrain", 0),
    lambda: StageConfig("pretrain", 10, batch_voxels=0),
    lambda: StageConfig("pretrain", 10, lr=0.0),
    lambda: StageConfig("pretrain", 10, lr=-1e-3),
    lambda: StageConfig("pretrain", 10, lr=float("nan")),
    lambda: default_stages(0),
    lambda: default_stages(-1.0),
    lambda: default_stages(float("nan")),
    lambda: TrainConfig(stages=[StageConfig("finetune", 10, n_query=0)]),  # measured stage 3: the query loss
    lambda: TrainConfig(loss="query", stages=[StageConfig("pretrain", 10, n_query=0)]),
    lambda: TrainConfig(stages=[]),
    lambda: TrainConfig(checkpoint_every=0),
], ids=["steps", "batch_voxels", "lr0", "lr<0", "lr_nan", "scale0", "scale<0", "scale_nan",
        "n_query_finetune", "n_query_query_loss", "no_stages", "checkpoint_every"])
def test_degenerate_settings_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


def test_n_query_zero_is_fine_without_the_query_loss():
    TrainConfig(supervision="truth", stages=[StageConfig("finetune", 10, n_query=0)])


# --------------------------------------------------------------------------------------------
# Runs in the old layout (hand-serialised optimiser state beside state.json)
# --------------------------------------------------------------------------------------------
def test_a_run_in_the_old_layout_is_refused_in_one_line_and_can_start_over(run, reference, tmp_path):
    folder = tmp_path / "run"
    run(folder, stop_after_steps=4)
    (folder / "checkpoint.pt").unlink()
    (folder / "state.json").write_text(json.dumps({"stage": 0, "step": 4}))
    safetensors.torch.save_file({"rng::torch": torch.get_rng_state()}, str(folder / "optimizer.safetensors"))
    with pytest.raises(RunDirError, match=r"old layout \(state.json.*cannot resume.*resume=False") as err:
        run(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)
    run(folder, resume=False)
    _assert_like_reference(folder, reference)
    assert not (folder / "state.json").exists() and not (folder / "optimizer.safetensors").exists()


# --------------------------------------------------------------------------------------------
# Evaluation during training, and a time budget
# --------------------------------------------------------------------------------------------
def test_a_callback_is_logged_and_changes_nothing(run, reference, tmp_path):
    seen = []

    def evaluate(step, model):
        seen.append((step, model.training, torch.is_grad_enabled()))
        torch.randn(3)  # a draw from the global generator: the run must not notice it
        return {"ev": step / 100, "broken": float("nan")}

    folder = tmp_path / "run"
    model = run(folder, callback=evaluate, eval_every=5)
    assert seen == [(5, False, False), (10, False, False), (13, False, False)]  # every 5 steps, and the last
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [(i + 1, r["ev"], r["broken"]) for i, r in enumerate(log) if "ev" in r] == \
        [(5, 0.05, None), (10, 0.1, None), (13, 0.13, None)]  # strict JSON: NaN is logged as null
    assert [{k: v for k, v in r.items() if k not in ("ev", "broken")} for r in _log(folder)] == reference[1]
    assert all(torch.equal(t, reference[0][n]) for n, t in model.state_dict().items())
    with pytest.raises(ConfigError, match="eval_every"):
        run(tmp_path / "other", callback=evaluate, eval_every=0)


def test_max_minutes_stops_and_saves_the_run(run, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    now = [0.0]
    monkeypatch.setattr(train_mod, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def a_minute_per_step(step, model):
        now[0] += 60.0
        return step

    folder = tmp_path / "run"
    model = run(folder, config=_config(max_minutes=3.5), callback=a_minute_per_step, eval_every=1)
    assert not model.training and _position(folder) == (0, 4)  # 4 minutes > 3.5: stopped and saved
    assert [r["eval"] for r in _log(folder)] == [1, 2, 3, 4]
    assert "time budget of 3.5 min used" in capsys.readouterr().out
    run(folder, config=_config(max_minutes=3.5), callback=a_minute_per_step, eval_every=1)
    assert "has used its time budget" in capsys.readouterr().out and _position(folder) == (0, 4)
    with pytest.raises(RunDirError, match=r"max_minutes: 3\.5 -> None"):  # the budget is part of the recipe
        run(folder)
    with pytest.raises(ConfigError, match="max_minutes"):
        _config(max_minutes=0)
