"""BraInCoRL-lite: in-context meta-learned encoding models of higher visual cortex.

The front door: the names a reader of the book calls. Arrays are (images, voxels); subjects are
0-based positions in a dataset.

>>> import braincorl_lite as bcl
>>> model = bcl.load_pretrained()                                    # doctest: +SKIP
>>> data = bcl.load_dataset("simnsd", size="tiny")[0]                 # doctest: +SKIP
>>> W, b = bcl.fit_braincorl(model, data.features[:100], data.betas[:100])  # doctest: +SKIP
"""

from .baselines import bayes_oracle, fit_ridge, predict_linear
from .data import SubjectData
from .datasets import load_dataset
from .evaluation import evaluate_subject
from .metrics import explained_variance
from .checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from .model import BraInCoRL, ModelConfig, fit_braincorl
from .training import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "BraInCoRL", "ModelConfig", "load_pretrained", "load_checkpoint", "save_checkpoint",
    "fit_braincorl",
    "load_dataset", "SubjectData",
    "fit_ridge", "bayes_oracle", "predict_linear", "explained_variance",
    "evaluate_subject", "train", "TrainConfig",
]
