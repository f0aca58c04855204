"""Keras optimizers with gradient clipping on by default."""

from __future__ import annotations

import keras

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "adagrad": keras.optimizers.Adagrad,
}


def _check_threshold(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Argument `{name}` must be a positive number or None. Received: {name}={value!r}")
    return float(value)


def make_optimizer(
    name: str = "adam",
    learning_rate: float = 1e-3,
    global_clipnorm: float | None = 1.0,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    **kwargs,
) -> keras.optimizers.Optimizer:
    """A Keras optimizer that clips gradients by their global norm unless told otherwise.

    With g the list of all gradients and ||g|| = sqrt(sum_i ||g_i||^2) (the global norm),
    ``global_clipnorm=c`` applies g <- g * c / max(||g||, c), i.e. if ||g|| > c then
    g <- c * g / ||g|| (the lecture's algorithm), else g unchanged. For plain SGD one step
    then moves the weights by at most ``learning_rate * c`` in global norm.

    ``clipnorm`` (each gradient by its own norm) and ``clipvalue`` (elementwise) are Keras's
    alternatives; Keras allows only one kind, so pass ``global_clipnorm=None`` with them.
    ``global_clipnorm=None`` with neither gives an unclipped optimizer. ``kwargs`` go to the
    Keras optimizer (``momentum``, ``weight_decay``, ``beta_1``...).

    Under ``rnnkit.training`` every strategy clips the *all-replica* gradient (the trainer
    sums replica gradients before the optimizer sees them).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Argument `name` must be one of {tuple(OPTIMIZERS)}. Received: name={name!r}")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(
            f"Argument `learning_rate` must be a positive number. Received: learning_rate={learning_rate!r}"
        )
    thresholds = {
        "global_clipnorm": _check_threshold("global_clipnorm", global_clipnorm),
        "clipnorm": _check_threshold("clipnorm", clipnorm),
        "clipvalue": _check_threshold("clipvalue", clipvalue),
    }
    chosen = {k: v for k, v in thresholds.items() if v is not None}
    if len(chosen) > 1:
        given = ", ".join(f"{k}={v}" for k, v in chosen.items())
        raise ValueError(
            "Only one of `global_clipnorm`, `clipnorm` and `clipvalue` can be set "
            f"(pass global_clipnorm=None to use clipnorm or clipvalue). Received: {given}"
        )
    return OPTIMIZERS[name](learning_rate=float(learning_rate), **chosen, **kwargs)


def clip_threshold(optimizer: keras.optimizers.Optimizer) -> tuple[str | None, float | None]:
    """Which clipping the optimizer applies: ``(kind, threshold)`` with kind one of
    ``"global_clipnorm"``, ``"clipnorm"``, ``"clipvalue"``; ``(None, None)`` when unclipped."""
    for kind in ("global_clipnorm", "clipnorm", "clipvalue"):
        value = getattr(optimizer, kind, None)
        if value:
            return kind, float(value)
    return None, None


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate in use now, as a Python float."""
    value = optimizer.learning_rate
    return float(value.numpy() if hasattr(value, "numpy") else value)
