"""Keras optimizers with gradient clipping on by default, that record each step's gradient.

Every optimizer `make_optimizer` returns is its Keras class with `GradientRecord` mixed in
(``isinstance(make_optimizer("adam"), keras.optimizers.Adam)`` holds). Per applied step it

1. sums the replica gradients first when it runs inside a replica of a multi-replica
   ``tf.distribute`` strategy (``model.fit`` under MirroredStrategy), so the norm and the
   clipping are those of the global gradient, not of each replica's part;
2. records the pre-clip global norm ||g|| = sqrt(sum_i ||g_i||^2) and whether the clipping
   changed g, in the optimizer variable ``gradient_record`` = [norm, clipped (0/1)];
3. applies the update (clipping it as Keras does) only when ||g|| is finite: a step with an
   Inf/NaN gradient leaves weights, moments and the iteration count untouched.

`GradientNormHistory` and `NonFiniteGuard` read the record after each batch, in ``model.fit``
and in rnnkit's own `Trainer` alike.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

CLIP_KINDS = ("global_clipnorm", "clipnorm", "clipvalue")


class GradientRecord:
    """Mixin for a Keras optimizer class: record the pre-clip global norm, skip non-finite steps."""

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.gradient_record = self.add_variable(
            shape=(2,), dtype="float32", aggregation="only_first_replica", name="gradient_record"
        )

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            if trainable_variables is None:
                raise ValueError(
                    f"{type(self).__name__}: call `optimizer.build(trainable_variables)` before applying "
                    "gradients without variables."
                )
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
        grads = list(grads)
        parent_apply = super().apply
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            # One replica, or cross-replica context (rnnkit's Trainer, which has summed already).
            norm, clipped = self._measure(grads)
            self.gradient_record.assign(ops.stack([norm, clipped]))
            ops.cond(ops.isfinite(norm), lambda: parent_apply(grads, trainable_variables), lambda: None)
            return
        # A replica of a multi-replica strategy (model.fit): sum over replicas, then decide once
        # in cross-replica context (a cond around a merge_call is not allowed inside a replica).
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        for i, g in zip(present, summed):
            grads[i] = g
        norm, clipped = self._measure(grads)

        def decide(distribution, grads, norm, clipped):
            first_norm = distribution.experimental_local_results(norm)[0]
            first_clipped = distribution.experimental_local_results(clipped)[0]
            self.gradient_record.assign(ops.stack([first_norm, first_clipped]))

            def update():
                distribution.extended.call_for_each_replica(parent_apply, args=(grads, trainable_variables))

            ops.cond(ops.isfinite(first_norm), update, lambda: None)

        context.merge_call(decide, args=(grads, norm, clipped))

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # `apply` has summed the replica gradients already (TF backend hook; identity here).
        return list(grads_and_vars)

    def _measure(self, grads):
        """(pre-clip global norm, 1.0 if clipping changes the gradient else 0.0), float32 scalars."""
        present = [ops.cast(g, "float32") for g in grads if g is not None]
        if self.loss_scale_factor is not None:
            present = [g / self.loss_scale_factor for g in present]
        norm = tf.linalg.global_norm(present)
        if self.global_clipnorm:
            clipped = norm > self.global_clipnorm
        elif self.clipnorm:
            clipped = tf.reduce_any(tf.stack([tf.norm(g) > self.clipnorm for g in present]))
        elif self.clipvalue:
            clipped = tf.reduce_any(tf.stack([tf.reduce_max(tf.abs(g)) > self.clipvalue for g in present]))
        else:
            clipped = tf.constant(False)
        return norm, ops.cast(clipped, "float32")


def _recording(base: type) -> type:
    cls = type(
        base.__name__,
        (GradientRecord, base),
        {"__doc__": f"`keras.optimizers.{base.__name__}` that records each step's gradient norm (`GradientRecord`)."},
    )
    cls.__module__ = __name__
    return keras.saving.register_keras_serializable(package="rnnkit")(cls)


Adam = _recording(keras.optimizers.Adam)
AdamW = _recording(keras.optimizers.AdamW)
SGD = _recording(keras.optimizers.SGD)
RMSprop = _recording(keras.optimizers.RMSprop)
Adagrad = _recording(keras.optimizers.Adagrad)

OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop, "adagrad": Adagrad}


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

    The optimizer records each step's pre-clip global norm and whether it clipped
    (`GradientRecord`; `GradientNormHistory` puts them into ``History``) and skips steps whose
    gradient is not finite. Under ``model.fit`` and rnnkit's `Trainer`, with any number of
    replicas, it clips and records the *all-replica* gradient.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Argument `name` must be one of {tuple(OPTIMIZERS)}. Received: name={name!r}")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(
            f"Argument `learning_rate` must be a positive number. Received: learning_rate={learning_rate!r}"
        )
    given = (global_clipnorm, clipnorm, clipvalue)
    thresholds = {kind: _check_threshold(kind, value) for kind, value in zip(CLIP_KINDS, given)}
    chosen = {k: v for k, v in thresholds.items() if v is not None}
    if len(chosen) > 1:
        given = ", ".join(f"{k}={v}" for k, v in chosen.items())
        raise ValueError(
            "Only one of `global_clipnorm`, `clipnorm` and `clipvalue` can be set "
            f"(pass global_clipnorm=None to use clipnorm or clipvalue). Received: {given}"
        )
    return OPTIMIZERS[name](learning_rate=float(learning_rate), **chosen, **kwargs)


def with_gradient_record(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """``optimizer`` itself when it records gradients, else an unbuilt recording twin from its config."""
    if isinstance(optimizer, GradientRecord):
        return optimizer
    if optimizer.built:
        raise ValueError(
            f"The optimizer {type(optimizer).__name__} does not record gradient norms and is already built. "
            "Pass an optimizer from rnnkit.training.make_optimizer, or an unbuilt Keras optimizer."
        )
    base = type(optimizer)
    twin = next((cls for cls in OPTIMIZERS.values() if cls.__bases__[1] is base), None) or _recording(base)
    return twin.from_config(optimizer.get_config())


def clip_threshold(optimizer: keras.optimizers.Optimizer) -> tuple[str | None, float | None]:
    """Which clipping the optimizer applies: ``(kind, threshold)`` with kind one of
    ``"global_clipnorm"``, ``"clipnorm"``, ``"clipvalue"``; ``(None, None)`` when unclipped."""
    for kind in CLIP_KINDS:
        value = getattr(optimizer, kind, None)
        if value:
            return kind, float(value)
    return None, None


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate in use now, as a Python float."""
    value = optimizer.learning_rate
    return float(value.numpy() if hasattr(value, "numpy") else value)
