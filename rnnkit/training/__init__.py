"""Training: clipped optimizers that record each step's gradient norm, the Keras callbacks
`GradientNormHistory` and `NonFiniteGuard` (for `model.fit` and rnnkit's own loop), a custom
step for every tf.distribute strategy, atomic checkpoints, and `train` (what `rnnkit train`
and the demo call)."""

from rnnkit.training.checkpoint import Checkpoint, CheckpointMismatchError, CheckpointStore
from rnnkit.training.guard import GRADIENT_KEYS, GradientNormHistory, NonFiniteGuard, TrainingDivergedError
from rnnkit.training.model_spec import ModelSpec
from rnnkit.training.optimizer import OPTIMIZERS, GradientRecord, make_optimizer
from rnnkit.training.run import train
from rnnkit.training.strategy import DISTRIBUTE, make_strategy
from rnnkit.training.trainer import HISTORY_KEYS, Trainer

__all__ = [
    "DISTRIBUTE",
    "GRADIENT_KEYS",
    "HISTORY_KEYS",
    "OPTIMIZERS",
    "Checkpoint",
    "CheckpointMismatchError",
    "CheckpointStore",
    "GradientNormHistory",
    "GradientRecord",
    "ModelSpec",
    "NonFiniteGuard",
    "Trainer",
    "TrainingDivergedError",
    "make_optimizer",
    "make_strategy",
    "train",
]
