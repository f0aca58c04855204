"""Keras callbacks for `model.fit` (and rnnkit's own `Trainer`): gradient-norm history and
the non-finite guard. Both read the per-step record an optimizer from `make_optimizer` keeps
(`optimizer.GradientRecord`)."""

from __future__ import annotations

import logging
import math

import keras
import numpy as np

from rnnkit.training.optimizer import GradientRecord, current_learning_rate

logger = logging.getLogger("rnnkit.training")

GRADIENT_KEYS = ("grad_norm_mean", "grad_norm_max", "clipped_fraction")


class TrainingDivergedError(RuntimeError):
    """Training kept producing non-finite losses or gradients after the allowed recoveries."""


def _optimizer_of(callback: keras.callbacks.Callback, given):
    optimizer = given if given is not None else getattr(callback.model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            f"{type(callback).__name__}: the model has no optimizer. Call `model.compile(optimizer=...)` "
            "before `model.fit`, or pass `optimizer=` to the callback."
        )
    return optimizer


def gradient_record(optimizer) -> tuple[float, bool] | None:
    """The last applied step's (pre-clip global norm, clipped), or None for an optimizer that
    does not record (not from `make_optimizer`) or has not run a step yet."""
    if not isinstance(optimizer, GradientRecord) or not optimizer.built:
        return None
    norm, clipped = np.asarray(optimizer.gradient_record.numpy(), dtype="float64")
    return float(norm), bool(clipped)


class GradientNormHistory(keras.callbacks.Callback):
    """Put the epoch's gradient statistics into the epoch logs, hence into ``History``.

    ``grad_norm_mean`` / ``grad_norm_max``: mean and max of the pre-clip global gradient norm
    over the epoch's steps with a finite gradient; ``clipped_fraction``: the fraction of those
    steps whose gradient the optimizer clipped (NaN for all three when no step was finite).
    Each batch's logs also get ``grad_norm``. Needs an optimizer from `make_optimizer` (the
    model's, or ``optimizer=``); it reads the optimizer's record after every batch, so with
    ``steps_per_execution=k`` it sees every k-th step.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer | None = None):
        super().__init__()
        self.optimizer = optimizer
        self._norms: list[float] = []
        self._clipped = 0

    def on_train_begin(self, logs=None):
        optimizer = _optimizer_of(self, self.optimizer)
        if not isinstance(optimizer, GradientRecord):
            raise TypeError(
                f"GradientNormHistory needs an optimizer that records gradient norms (from "
                f"rnnkit.training.make_optimizer). Received: {type(optimizer).__module__}.{type(optimizer).__name__}"
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._norms, self._clipped = [], 0

    def on_train_batch_end(self, batch, logs=None):
        record = gradient_record(_optimizer_of(self, self.optimizer))
        if record is None:
            return
        norm, clipped = record
        if logs is not None:
            logs["grad_norm"] = norm
        if math.isfinite(norm):
            self._norms.append(norm)
            self._clipped += clipped

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._norms:
            logs.update(
                grad_norm_mean=float(np.mean(self._norms)),
                grad_norm_max=float(np.max(self._norms)),
                clipped_fraction=self._clipped / len(self._norms),
            )
        else:
            logs.update(dict.fromkeys(GRADIENT_KEYS, math.nan))


class NonFiniteGuard(keras.callbacks.Callback):
    """Recover from a step whose loss or pre-clip gradient norm is Inf or NaN.

    The guard keeps the last good state in memory: model weights and optimizer variables
    (moments, iteration count, learning rate) at the start of training and at the end of
    every epoch. After each batch it checks the logged loss and, with an optimizer from
    `make_optimizer`, the step's pre-clip gradient norm (such an optimizer never applies a
    non-finite gradient). On a non-finite step it

    1. counts the event; after ``max_recoveries`` recoveries the next event restores the last
       good state and raises `TrainingDivergedError` (``max_recoveries=3`` allows three
       recoveries, the fourth non-finite step stops training);
    2. restores the last good state, so no update of the bad step (or of anything before it
       since that state) stays applied; the model's metrics go back to their values before the
       bad step, so the epoch's logged loss covers its finite steps;
    3. sets the learning rate to ``lr_factor`` times the rate in use when the event happened;
    4. logs a warning and appends the event to `events`. Training goes on with the next batch.

    Each epoch's logs get ``recoveries`` (cumulative) and ``learning_rate``. Works in ``model.fit`` (also under
    MirroredStrategy) and in rnnkit's `Trainer`/`train`, which use this same callback. The
    learning rate must be a constant, not a schedule.
    """

    def __init__(
        self,
        lr_factor: float = 0.5,
        max_recoveries: int = 3,
        optimizer: keras.optimizers.Optimizer | None = None,
    ):
        super().__init__()
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or not 0.0 < lr_factor < 1.0:
            raise ValueError(f"Argument `lr_factor` must be a float in (0, 1). Received: lr_factor={lr_factor!r}")
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int) or max_recoveries < 0:
            raise ValueError(
                f"Argument `max_recoveries` must be a non-negative integer. Received: max_recoveries={max_recoveries!r}"
            )
        self.lr_factor = float(lr_factor)
        self.max_recoveries = max_recoveries
        self.optimizer = optimizer
        self.recoveries = 0
        self.events: list[dict] = []
        self._good: tuple[list, list] | None = None
        self._good_epoch: int | None = None  # completed epochs at the last good state
        self._metrics: list = []
        self._epoch = 0

    # -- state -----------------------------------------------------------------------------------
    def _optimizer_variables(self, optimizer) -> list:
        # The gradient record describes the step just taken; restoring it would hide the event.
        record = getattr(optimizer, "gradient_record", None)
        return [v for v in optimizer.variables if v is not record]

    def _keep_good_state(self, completed_epochs: int | None) -> None:
        optimizer = _optimizer_of(self, self.optimizer)
        self._good = (
            [np.array(v.numpy()) for v in self.model.weights],
            [np.array(v.numpy()) for v in self._optimizer_variables(optimizer)],
        )
        self._good_epoch = completed_epochs

    def _metric_variables(self) -> list:
        return [v for metric in self.model.metrics for v in metric.variables]

    def _restore(self) -> None:
        optimizer = _optimizer_of(self, self.optimizer)
        weights, optimizer_values = self._good
        for variable, value in zip(self.model.weights, weights):
            variable.assign(value)
        for variable, value in zip(self._optimizer_variables(optimizer), optimizer_values):
            variable.assign(value)
        for variable, value in zip(self._metric_variables(), self._metrics):
            variable.assign(value)

    # -- callback hooks ----------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        optimizer = _optimizer_of(self, self.optimizer)
        check_constant_learning_rate(optimizer)
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self._keep_good_state(None)
        self._metrics = [np.array(v.numpy()) for v in self._metric_variables()]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._good_epoch is None:
            self._good_epoch = epoch
        self._metrics = [np.array(v.numpy()) for v in self._metric_variables()]

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"]) if logs and "loss" in logs else None
        record = gradient_record(_optimizer_of(self, self.optimizer))
        norm = record[0] if record is not None else None
        if (loss is None or math.isfinite(loss)) and (norm is None or math.isfinite(norm)):
            if self._metrics:
                self._metrics = [np.array(v.numpy()) for v in self._metric_variables()]
            return
        self.recover(batch, loss, norm)

    def on_epoch_end(self, epoch, logs=None):
        self._keep_good_state(epoch + 1)
        if logs is not None:
            logs["recoveries"] = self.recoveries
            logs["learning_rate"] = current_learning_rate(_optimizer_of(self, self.optimizer))

    # -- the recovery ------------------------------------------------------------------------------
    def recover(self, batch: int, loss: float | None, grad_norm: float | None) -> dict:
        """Handle a non-finite step (batch ``batch``, 0-based, of the current epoch); return the event."""
        optimizer = _optimizer_of(self, self.optimizer)
        where = f"epoch {self._epoch + 1}, step {batch + 1}"
        what = f"loss={loss!r}, grad_norm={grad_norm!r}"
        if self.recoveries >= self.max_recoveries:
            self._restore()
            raise TrainingDivergedError(
                f"Training stopped: non-finite step at {where} ({what}) after {self.recoveries} recoveries "
                f"(max_recoveries={self.max_recoveries}). Each recovery restored the last good state (weights and "
                f"optimizer variables at the end of the last epoch) and multiplied the learning rate by "
                f"{self.lr_factor}; the model now holds that state again. Lower the learning rate or the clipping "
                "threshold, or check the data for Inf/NaN."
            )
        lr_before = current_learning_rate(optimizer)
        self._restore()
        lr_after = lr_before * self.lr_factor
        optimizer.learning_rate = lr_after
        self.recoveries += 1
        event = {
            "epoch": self._epoch + 1,
            "step": batch + 1,
            "loss": _jsonable(loss),
            "grad_norm": _jsonable(grad_norm),
            "restored_epoch": self._good_epoch,
            "learning_rate_before": lr_before,
            "learning_rate_after": lr_after,
            "recovery": self.recoveries,
        }
        self.events.append(event)
        logger.warning(
            "Non-finite step at %s (%s): restored the state after epoch %s, learning rate %.3g -> %.3g "
            "(recovery %d of %d).",
            where,
            what,
            self._good_epoch,
            lr_before,
            lr_after,
            self.recoveries,
            self.max_recoveries,
        )
        return event


def check_constant_learning_rate(optimizer) -> None:
    """The guard lowers a learning-rate variable; a schedule (or a callable) cannot be lowered."""
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or (
        callable(rate) and not isinstance(rate, keras.Variable)
    ):
        raise ValueError(
            "NonFiniteGuard lowers a constant learning rate; the optimizer has a schedule. "
            "Pass a float learning rate, or leave the guard out."
        )


def _jsonable(value: float | None) -> float | str | None:
    """JSON has no NaN/Inf: keep them as strings in event records."""
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)
