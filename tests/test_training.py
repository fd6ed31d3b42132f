import numpy as np
import pytest
import torch

from braincorl_lite.checkpoint import load_checkpoint
from braincorl_lite.errors import ConfigError, RunDirError
from braincorl_lite.model import ModelConfig
from braincorl_lite.tasks import GaussianVoxels, SubjectVoxels, fit_gaussian, population_loss, query_loss
from braincorl_lite.training import StageConfig, TrainConfig, read_log, train

SMALL = ModelConfig.lite(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, token_features="concat_xy").to_dict()


def _config(steps=40, loss="population", **kw):
    return TrainConfig(model=SMALL, n_components=32, loss=loss, checkpoint_every=15, **kw,
                       stages=[StageConfig("pretrain", steps, k_min=40, k_max=40, lr=3e-3, batch_voxels=32),
                               StageConfig("extend", steps, k_min=5, k_max=80, lr=2e-3, batch_voxels=32),
                               StageConfig("finetune", steps // 2, k_min=5, k_max=80, lr=1e-3, batch_voxels=32)])


def test_population_loss_is_the_infinite_query_error(rng):
    # (hw - theta)^T M (hw - theta) equals the mean squared prediction error over the pool
    x = rng.standard_normal((5000, 6))
    phi = np.hstack([x, np.ones((5000, 1))])
    M = torch.as_tensor(phi.T @ phi / len(phi))
    hw, theta = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    direct = ((torch.as_tensor(phi) @ (hw - theta).T) ** 2).mean(0)
    assert torch.allclose(population_loss(hw, theta, M, torch.ones(3, dtype=torch.float64)), direct.mean())
    q = query_loss(hw, torch.as_tensor(x), (torch.as_tensor(phi) @ theta.T).T, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(q, direct.mean())


def test_gaussian_voxels_follow_their_prior(tiny):
    s = tiny[0]
    theta = np.hstack([s.truth.weights, s.truth.bias[:, None]])
    mean, cov = fit_gaussian(theta)
    src = GaussianVoxels(s.features, mean, cov, np.array([0.25]), seed=0)
    b = src.sample(4000, 20, n_query=10)
    assert b.support_x.shape == (20, 512) and b.support_y.shape == (4000, 20) and b.query_y.shape == (4000, 10)
    assert np.allclose(b.theta.mean(0).numpy(), mean, atol=4 * np.sqrt(np.diag(cov).max() / 4000))
    clean = b.support_x @ b.theta[:, :-1].T + b.theta[:, -1]
    resid = b.support_y - clean.T
    assert abs(float(resid.var()) - 0.25) < 0.01


def test_subject_voxels_use_unique_images_only(tiny):
    src = SubjectVoxels(list(tiny), seed=0, use_truth=True)
    b = src.sample(16, 30, n_query=20)
    pool = np.vstack([s.features[s.unique_idx] for s in tiny])
    shared = tiny[0].features[tiny[0].shared_idx]
    for x in b.support_x.numpy()[:5]:
        assert np.isclose(pool @ x, 1, atol=1e-5).any()
        assert not np.isclose(shared @ x, 1, atol=1e-5).any()
    assert b.theta.shape == (16, 513)
    assert SubjectVoxels(list(tiny), seed=0).sample(16, 30).theta is None  # measured voxels: no weights


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_resumes(tiny, tmp_path):
    subjects = list(tiny)[1:]
    model = train(subjects, tmp_path / "run", _config(), device="cpu", progress=False)
    log = read_log(tmp_path / "run")
    assert len(log) == 100 and set(log.stage) == {"pretrain", "extend", "finetune"}
    # on voxels of a subject it never saw, the query error beats predicting the support mean
    # (what the untrained model does: its readout starts at zero)
    held = SubjectVoxels([tiny[0]], seed=5).sample(tiny[0].n_voxels, 60, n_query=150)
    with torch.no_grad():
        hw = model(held.support_x, held.support_y)
        trained = query_loss(hw, held.query_x, held.query_y, held.norm)
        mean_only = torch.zeros_like(hw)
        mean_only[:, -1] = held.support_y.mean(1)
        baseline = query_loss(mean_only, held.query_x, held.query_y, held.norm)
    assert trained < 0.99 * baseline  # measured supervision, 100 tiny steps: about 0.975
    # the checkpoint reloads bit for bit and carries the recipe and the position (the end)
    again, meta = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert meta["stage"] == 3 and meta["step"] == 0
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a.cpu(), b.cpu()), n
    assert meta["train_config"]["loss"] == "population"

    # stop a second run in the middle of stage 2, resume it: it ends exactly where the first did
    run2 = tmp_path / "run2"
    train(subjects, run2, _config(), device="cpu", progress=False, stop_after_steps=52)
    _, meta = load_checkpoint(run2 / "model.safetensors")
    assert (meta["stage"], meta["step"]) == (1, 12)
    with pytest.raises(RunDirError, match=r"another recipe.*stages\[0\]\.steps: 40 -> 999"):
        train(subjects, run2, _config(steps=999), device="cpu", progress=False)  # not silently the old recipe
    resumed = train(subjects, run2, _config(), device="cpu", progress=False)
    log2 = read_log(run2)
    assert len(log2) == 100
    assert np.array_equal(log2.loss.to_numpy(), log.loss.to_numpy())  # bit for bit
    for (n, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.slow
def test_query_loss_training_runs(tiny, tmp_path):
    cfg = _config(steps=10, loss="query")
    train(list(tiny)[1:], tmp_path / "q", cfg, device="cpu", progress=False)
    log = read_log(tmp_path / "q")
    assert np.isfinite(log.loss).all()


def test_truth_supervision_needs_simulated_subjects(tiny, tmp_path):
    import dataclasses

    s = dataclasses.replace(tiny[0], truth=None)
    with pytest.raises(ConfigError, match="supervision='truth' needs simulated subjects"):
        train([s], tmp_path / "x", _config(steps=2, supervision="truth"), device="cpu", progress=False)


def test_count_parameters_without_allocation():
    from braincorl_lite.model import BraInCoRL
    from braincorl_lite.training import count_parameters

    assert count_parameters(ModelConfig.paper()) == 97_074_852
    small = ModelConfig.lite(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64)
    assert count_parameters(small) == BraInCoRL(small).n_parameters()
    assert count_parameters(small.to_dict()) == count_parameters(small)


def test_stage_summary():
    import pandas as pd

    from braincorl_lite.training import stage_summary

    log = pd.DataFrame({"stage": ["pretrain"] * 10 + ["finetune"] * 10, "step": list(range(10)) * 2,
                        "k": [50] * 10 + list(range(5, 15)), "loss": np.r_[np.linspace(1, 0.5, 10), np.full(10, 0.2)],
                        "seconds": np.arange(1, 21, dtype=float)})
    s = stage_summary(log, tail=0.2)
    assert list(s.index) == ["pretrain", "finetune"]
    assert s.loc["pretrain", "steps"] == 10 and s.loc["finetune", "k_min"] == 5 and s.loc["finetune", "k_max"] == 14
    assert np.isclose(s.loc["pretrain", "first_loss"], np.linspace(1, 0.5, 10)[:2].mean())
    assert np.isclose(s.loc["pretrain", "final_loss"], np.linspace(1, 0.5, 10)[-2:].mean())
    assert np.isclose(s.loc["finetune", "seconds"], 10.0)
