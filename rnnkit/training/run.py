"""`train`: the whole run behind `rnnkit train` and the demo, writing one output directory.

Output directory layout (written by the chief worker)::

    OUT/model.keras          the trained model (loads after ``import rnnkit.layers``)
    OUT/history.json         {"history": {key: [per epoch]}, "recovery_events": [...], "stopped": null | message, ...}
    OUT/checkpoints/ckpt-<epoch>.npz   weights + optimizer state + progress, written atomically

Other workers of a multi-worker run keep their own checkpoints in ``OUT/.workers/<index>/``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras

from rnnkit.tasks import Task, make_task
from rnnkit.training.checkpoint import CheckpointStore
from rnnkit.training.guard import NonFiniteGuard, TrainingDivergedError
from rnnkit.training.model_spec import ModelSpec
from rnnkit.training.optimizer import make_optimizer, with_gradient_record
from rnnkit.training.strategy import is_chief, make_strategy, worker_index
from rnnkit.training.trainer import Trainer

logger = logging.getLogger("rnnkit.training")


def train(
    model_or_spec: keras.Model | ModelSpec | dict,
    task: Task | str,
    epochs: int,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    learning_rate: float = 1e-3,
    global_clipnorm: float | None = 1.0,
    resume: bool = False,
    distribute=None,
    cpu_replicas: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    lr_factor: float = 0.5,
    max_recoveries: int = 3,
    keep_checkpoints: int = 2,
    task_params: dict | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 1,
) -> keras.callbacks.History:
    """Train a model on a task with clipping, the non-finite guard and atomic checkpoints.

    ``model_or_spec``: a `ModelSpec` (or its dict), built for the task inside the strategy's
    scope — the form to use with ``distribute`` — or a built Keras model whose variables were
    created under that strategy's scope (pass the strategy object as ``distribute`` then).
    ``task``: a `Task` or a built-in name (``make_task(name, seed=seed, **task_params)``).
    ``optimizer``: a name for `make_optimizer` (with ``learning_rate`` and
    ``global_clipnorm``) or a Keras optimizer. ``distribute``: ``None``/"default",
    ``"mirrored"``, ``"multiworker"`` (``TF_CONFIG``) or a strategy; ``cpu_replicas`` splits
    the CPU into that many logical devices for "mirrored". ``shuffle=False`` keeps the
    training examples in task order (the order ``model.fit(shuffle=False)`` sees). Returns the Keras ``History``
    (keys in ``rnnkit.training.HISTORY_KEYS``). Raises `TrainingDivergedError` after
    ``max_recoveries`` recoveries, having written ``history.json`` with the reason.
    """
    strategy = make_strategy(distribute, cpu_replicas)  # first: multi-worker must start before other TF ops
    if isinstance(task, str):
        task = make_task(task, seed=seed, **(task_params or {}))
    elif task_params:
        raise ValueError("Argument `task_params` applies to a task given by name, not to a Task object.")
    if isinstance(model_or_spec, dict):
        model_or_spec = ModelSpec.from_dict(model_or_spec)
    guard = NonFiniteGuard(lr_factor=lr_factor, max_recoveries=max_recoveries)
    out_dir = Path(out_dir)
    chief = is_chief(strategy)
    checkpoint_dir = out_dir / "checkpoints" if chief else out_dir / ".workers" / str(worker_index(strategy))

    keras.utils.set_random_seed(seed)
    with strategy.scope():
        if isinstance(model_or_spec, ModelSpec):
            model = model_or_spec.build(task)
        elif isinstance(model_or_spec, keras.Model):
            model = model_or_spec
        else:
            raise ValueError(
                "Argument `model_or_spec` must be a keras.Model, a ModelSpec or a dict of ModelSpec fields. "
                f"Received: {type(model_or_spec).__name__}"
            )
        if isinstance(optimizer, str):
            optimizer = make_optimizer(optimizer, learning_rate=learning_rate, global_clipnorm=global_clipnorm)
        optimizer = with_gradient_record(optimizer)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(
        model,
        optimizer,
        task.kind,
        store=CheckpointStore(checkpoint_dir, keep=keep_checkpoints),
        tolerance=task.tolerance,
        strategy=strategy,
        guard=guard,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        verbose=verbose if chief else 0,
        callbacks=callbacks,
    )
    record = {
        "task": task.name,
        "task_params": task.params,
        "model": model_or_spec.to_dict() if isinstance(model_or_spec, ModelSpec) else None,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": type(strategy).__name__,
        "batch_size": batch_size,
        "seed": seed,
    }
    try:
        history = trainer.fit(task, epochs, resume=resume, meta=record)
    except TrainingDivergedError as error:
        if chief:
            latest = trainer.store.latest()
            partial = latest.meta.get("history", {}) if latest is not None else {}
            _write_json(
                out_dir / "history.json",
                {**record, "history": partial, "stopped": str(error), "recovery_events": guard.events},
            )
        raise
    if chief:
        _save_model(model, out_dir / "model.keras")
        _write_json(
            out_dir / "history.json",
            {**record, "history": history.history, "stopped": None, "recovery_events": guard.events},
        )
    return history


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_model(model: keras.Model, path: Path) -> None:
    """``model.save`` to a temporary ``.keras`` name, then rename into place."""
    tmp = path.with_name(f".{path.stem}-partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
