"""Training: clipped optimizers, a custom step for every tf.distribute strategy, the non-finite
guard, atomic checkpoints, and `train` (what `rnnkit train` and the demo call)."""

from rnnkit.training.checkpoint import Checkpoint, CheckpointMismatchError, CheckpointStore
from rnnkit.training.guard import NonFiniteGuard, TrainingDivergedError
from rnnkit.training.model_spec import ModelSpec
from rnnkit.training.optimizer import OPTIMIZERS, make_optimizer
from rnnkit.training.run import train
from rnnkit.training.strategy import DISTRIBUTE, make_strategy
from rnnkit.training.trainer import HISTORY_KEYS, Trainer

__all__ = [
    "DISTRIBUTE",
    "HISTORY_KEYS",
    "OPTIMIZERS",
    "Checkpoint",
    "CheckpointMismatchError",
    "CheckpointStore",
    "ModelSpec",
    "NonFiniteGuard",
    "Trainer",
    "TrainingDivergedError",
    "make_optimizer",
    "make_strategy",
    "train",
]
