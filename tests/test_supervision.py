"""What meta-training may learn from: measured responses only, unless it is the truth ablation."""

import copy

import numpy as np
import pytest

from braincorl_lite.baselines import fully_trained
from braincorl_lite.checkpoint import load_checkpoint
from braincorl_lite.model import ModelConfig
from braincorl_lite.tasks import SubjectVoxels, measured_prior, strip_truth
from braincorl_lite.training import StageConfig, TrainConfig, train

SMALL = ModelConfig.lite(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, token_features="concat_xy").to_dict()


def _config(supervision="measured"):
    return TrainConfig(model=SMALL, n_components=16, supervision=supervision, checkpoint_every=1000,
                       stages=[StageConfig("pretrain", 3, k_min=30, k_max=60, batch_voxels=16),
                               StageConfig("extend", 3, k_min=5, k_max=60, batch_voxels=16),
                               StageConfig("finetune", 3, k_min=5, k_max=60, n_query=50, batch_voxels=16)])


class _Poison:
    """Stands in for ground truth: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the training code read ground truth (truth.{name})")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the training code read ground truth")


def _poisoned(subjects):
    out = []
    for s in subjects:
        s = copy.copy(s)
        s.truth = _Poison()
        out.append(s)
    return out


def test_measured_training_never_reads_truth(tiny, tmp_path):
    subjects = _poisoned(list(tiny)[1:])
    model = train(subjects, tmp_path / "measured", _config("measured"), device="cpu", progress=False)
    assert model is not None
    _, meta = load_checkpoint(tmp_path / "measured" / "model.safetensors")
    assert meta["train_config"]["supervision"] == "measured"
    # the poison is live: the truth ablation reads it and fails
    with pytest.raises(AssertionError, match="read ground truth"):
        train(subjects, tmp_path / "truth", _config("truth"), device="cpu", progress=False)


def test_truth_ablation_refuses_subjects_without_truth(tiny, tmp_path):
    with pytest.raises(ValueError, match="supervision='truth' needs simulated subjects"):
        train(strip_truth(list(tiny)[1:]), tmp_path / "run", _config("truth"), device="cpu", progress=False)


def test_measured_prior_comes_from_fully_trained_encoders_and_noise_ceilings(tiny):
    subjects = strip_truth(list(tiny))
    encoders = [fully_trained(s) for s in subjects]
    mean, cov, noise_var = measured_prior(subjects, encoders=encoders)
    theta = np.vstack([np.hstack([W, b[:, None]]) for W, b in encoders])
    assert np.allclose(mean, theta.mean(0))
    assert cov.shape == (theta.shape[1],) * 2
    s = subjects[0]
    expect = s.betas[s.unique_idx].var(0) * (1 - s.noise_ceiling)
    assert np.allclose(noise_var[: s.n_voxels], expect, rtol=1e-5)
    # fitted internally when not given: the same encoders
    mean2, _, _ = measured_prior(subjects)
    assert np.allclose(mean2, mean, atol=1e-6)


def test_measured_finetune_uses_the_query_loss_on_disjoint_images(tiny):
    cfg = _config("measured")
    assert [cfg.stage_loss(s) for s in cfg.stages] == ["population", "population", "query"]
    assert [_config("truth").stage_loss(s) for s in cfg.stages] == ["population"] * 3
    src = SubjectVoxels(strip_truth(list(tiny)), seed=0)
    batch = src.sample(8, 40, n_query=50)
    assert batch.theta is None  # measured voxels carry no target weights
    sx, qx = batch.support_x.numpy(), batch.query_x.numpy()
    assert not np.isclose(sx @ qx.T, 1, atol=1e-6).any()  # no query image is a support image
    # and both come from the subjects' unique images, never the shared (evaluation) images
    shared = tiny[0].features[tiny[0].shared_idx]
    assert not np.isclose(np.vstack([sx, qx]) @ shared.T, 1, atol=1e-6).any()


def test_stage_pool_is_checked_before_training(tiny, tmp_path):
    cfg = _config("measured")
    cfg.stages[2].n_query = 10_000
    with pytest.raises(ValueError, match=r"stage 'finetune' needs k_max 60 \+ 10000 query images"):
        train(list(tiny)[1:], tmp_path / "run", cfg, device="cpu", progress=False)


def test_shipped_checkpoint_was_trained_on_measured_data():
    from braincorl_lite.checkpoint import load_pretrained

    assert load_pretrained("simnsd_lite").metadata["train_config"]["supervision"] == "measured"
    assert load_pretrained("simnsd_lite_truth_ablation").metadata["train_config"]["supervision"] == "truth"
