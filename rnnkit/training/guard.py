"""The non-finite guard: roll back to the latest checkpoint and lower the learning rate."""

from __future__ import annotations

import logging
import math

import keras

from rnnkit.training.checkpoint import Checkpoint, CheckpointStore
from rnnkit.training.optimizer import current_learning_rate

logger = logging.getLogger("rnnkit.training")


class TrainingDivergedError(RuntimeError):
    """Training kept producing non-finite losses or gradients after the allowed recoveries."""


class NonFiniteGuard:
    """Recovery policy for a step whose loss or pre-clip gradient norm is Inf or NaN.

    The trainer never applies such a step. It calls `recover`, which

    1. counts the event; after ``max_recoveries`` recoveries the next event raises
       `TrainingDivergedError` (so ``max_recoveries=3`` allows three roll-backs, the fourth
       non-finite step stops training);
    2. restores model weights *and* optimizer state (moments, iteration count) from the
       latest checkpoint, i.e. the end of the last completed epoch (or the state before
       training, checkpoint 0);
    3. sets the learning rate to ``lr_factor`` times the rate in use when the event happened;
    4. logs a warning and records the event in `events`. The trainer then reruns the epoch
       after the checkpoint (same data order, new learning rate).
    """

    def __init__(self, lr_factor: float = 0.5, max_recoveries: int = 3):
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or not 0.0 < lr_factor < 1.0:
            raise ValueError(f"Argument `lr_factor` must be a float in (0, 1). Received: lr_factor={lr_factor!r}")
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int) or max_recoveries < 0:
            raise ValueError(
                f"Argument `max_recoveries` must be a non-negative integer. Received: max_recoveries={max_recoveries!r}"
            )
        self.lr_factor = float(lr_factor)
        self.max_recoveries = max_recoveries
        self.recoveries = 0
        self.events: list[dict] = []

    def recover(
        self,
        store: CheckpointStore,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        *,
        epoch: int,
        step: int,
        loss: float,
        grad_norm: float,
    ) -> Checkpoint:
        """Roll back after a non-finite step of ``epoch`` (0-based) / ``step``; return the checkpoint used."""
        what = f"loss={loss!r}, grad_norm={grad_norm!r}"
        if self.recoveries >= self.max_recoveries:
            raise TrainingDivergedError(
                f"Training stopped: non-finite step at epoch {epoch + 1}, step {step + 1} ({what}) after "
                f"{self.recoveries} recoveries (max_recoveries={self.max_recoveries}). Each recovery restored the "
                f"latest checkpoint in {store.directory} and multiplied the learning rate by {self.lr_factor}; "
                "lower the learning rate or the clipping threshold, or check the data for Inf/NaN."
            )
        checkpoint = store.latest()
        if checkpoint is None:
            raise TrainingDivergedError(
                f"Non-finite step at epoch {epoch + 1}, step {step + 1} ({what}) and no checkpoint in "
                f"{store.directory} to restore."
            )
        lr_before = current_learning_rate(optimizer)
        checkpoint.restore(model, optimizer)
        lr_after = lr_before * self.lr_factor
        optimizer.learning_rate = lr_after
        self.recoveries += 1
        event = {
            "epoch": epoch + 1,
            "step": step + 1,
            "loss": _jsonable(loss),
            "grad_norm": _jsonable(grad_norm),
            "restored_epoch": checkpoint.epoch,
            "checkpoint": checkpoint.path.name,
            "learning_rate_before": lr_before,
            "learning_rate_after": lr_after,
            "recovery": self.recoveries,
        }
        self.events.append(event)
        logger.warning(
            "Non-finite step at epoch %d, step %d (%s): restored %s (after epoch %d), learning rate %.3g -> %.3g "
            "(recovery %d of %d).",
            epoch + 1,
            step + 1,
            what,
            checkpoint.path.name,
            checkpoint.epoch,
            lr_before,
            lr_after,
            self.recoveries,
            self.max_recoveries,
        )
        return checkpoint


def _jsonable(value: float) -> float | str:
    """JSON has no NaN/Inf: keep them as strings in event records."""
    return value if math.isfinite(value) else str(value)
