"""The meta-trained checkpoint that ships with the package, on people it never saw."""

import pytest

from braincorl_lite.checkpoint import load_checkpoint, pretrained_path
from braincorl_lite.evaluation import braincorl_method, evaluate_subject, few_shot_methods
from braincorl_lite.simulate import simulate_simnsd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped():
    path = pretrained_path()
    assert path.exists(), f"the shipped checkpoint is missing: {path}"
    return load_checkpoint(path, device="cpu")


def test_card_and_metadata(shipped):
    model, meta = shipped
    assert meta["dataset"] == "simnsd" and meta["subject_seed"] == 0
    assert meta["heldout_subjects"] == [1] and "simnsd-01" not in meta["train_subjects"]
    assert (pretrained_path().parent / "MODEL_CARD.md").exists()
    assert pretrained_path().stat().st_size < 20e6


def test_beats_ridge_on_an_unseen_subject_seed(shipped):
    model, _ = shipped
    ds = simulate_simnsd("fast", subject_seed=11, n_subjects=2)
    for i, subj in enumerate(ds):
        methods = {"braincorl": braincorl_method(model), **few_shot_methods(subj, ds.subject_prior(i))}
        table = evaluate_subject(subj, [10, 30, 100], methods, n_draws=2, seed=i)
        ev = table[table.roi == "all"].groupby(["method", "k"]).ev.mean()
        for k in (10, 30, 100):
            assert ev["braincorl", k] > ev["ridge", k], (subj.subject, k, ev.to_dict())
        # more support images, better encoders (test-time scaling)
        assert ev["braincorl", 10] < ev["braincorl", 30] < ev["braincorl", 100]
        # and never above the Bayes limit by more than the evaluation noise
        assert ev["braincorl", 30] < ev["oracle", 30] + 0.01
