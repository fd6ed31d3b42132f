"""Data-parallel meta-training: 2 processes on CPU (gloo) must equal one process on the same episodes."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from braincorl_lite.cli import main
from braincorl_lite.checkpoint import load_checkpoint
from braincorl_lite.training import read_log

pytestmark = pytest.mark.slow

ARGS = ["--size", "tiny", "--steps-scale", "0.004", "--d-model", "32", "--layers", "1", "--heads", "2",
        "--components", "32", "--batch-voxels", "8", "--k-max", "60", "--threads", "1", "--no-resume"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_ranks_match_one_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(["train", "--out", str(single), *ARGS]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "braincorl_lite.cli", "train", "--out", str(multi), *ARGS]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    _, meta = load_checkpoint(multi / "model.safetensors")
    assert meta["distributed"]["world_size"] == 2 and meta["distributed"]["backend"] == "gloo"
    assert meta["distributed"]["max_param_diff_across_ranks"] == 0.0  # both ranks hold the same weights
    state = torch.load(multi / "checkpoint.pt", weights_only=True)  # rank 0 committed the finished run
    assert state["stage"] == len(state["train_config"]["stages"]) and state["step"] == 0

    log1, log2 = read_log(single), read_log(multi)
    assert len(log1) == len(log2) > 10
    assert np.allclose(log1.loss, log2.loss, rtol=1e-4, atol=1e-6)  # same episodes, same loss
    m1, _ = load_checkpoint(single / "model.safetensors")
    m2, _ = load_checkpoint(multi / "model.safetensors")
    d = m1.config.d_model
    for (name, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        if name.endswith("attn.qkv.bias"):
            # the key bias adds the same logit to every key of a query: softmax ignores it, its
            # gradient is rounding noise, and AdamW scales that noise up to the learning rate
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        assert torch.allclose(a, b, atol=1e-4), name
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, m1.config.n_features, generator=g), torch.randn(5, 40, generator=g)
    torch.testing.assert_close(m1(x, y), m2(x, y), atol=1e-4, rtol=1e-4)
