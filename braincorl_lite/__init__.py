"""BraInCoRL-lite: in-context meta-learned encoding models of higher visual cortex.

The front door: the names a reader of the book calls. Data arrays are (images, voxels); an
encoder is ``(W, b)`` with one row of ``W`` per voxel, so responses to images ``X`` are
``predict_linear(X, W, b) = X @ W.T + b``; subjects are 0-based positions in a dataset.

>>> import braincorl_lite as bcl
>>> data = bcl.load_dataset("simnsd", size="tiny")[0]
>>> W, b = bcl.fit_braincorl(bcl.load_pretrained(), data.features[:100], data.betas[:100])
>>> W.shape == (data.n_voxels, data.features.shape[1])
True

The submodules ``plotting``, ``interpretation`` and ``cortex`` hold the figures, the attention
and prompt analyses and the ROI tables; ``braincorl_lite.nsd`` is the real-data path.
"""

from . import cortex, interpretation, plotting
from .baselines import bayes_oracle, fit_ridge, predict_linear
from .checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from .data import SubjectData
from .datasets import load_dataset
from .evaluation import evaluate_heldout, evaluate_subject
from .metrics import explained_variance
from .model import BraInCoRL, ModelConfig, fit_braincorl
from .training import StageConfig, TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "BraInCoRL", "ModelConfig", "load_pretrained", "load_checkpoint", "save_checkpoint", "fit_braincorl",
    "load_dataset", "SubjectData",
    "fit_ridge", "bayes_oracle", "predict_linear", "explained_variance",
    "evaluate_subject", "evaluate_heldout", "train", "TrainConfig", "StageConfig",
    "cortex", "interpretation", "plotting",
]
