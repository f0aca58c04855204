"""Atomic training checkpoints: model weights, optimizer state and progress in one ``.npz``.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, then
renamed into place with ``os.replace`` (atomic on POSIX and Windows). A crash mid-write leaves
at most a stray ``*.tmp`` file, which is ignored, and the previous checkpoint intact. Files are
named ``ckpt-<epoch, 6 digits>.npz``; the newest complete one is the latest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np

logger = logging.getLogger("rnnkit.training")

_NAME = re.compile(r"^ckpt-(\d{6})\.npz$")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model or optimizer it is restored into."""


@dataclasses.dataclass
class Checkpoint:
    """One saved state. ``epoch`` counts completed epochs (0 = before training)."""

    path: Path
    epoch: int
    model_weights: list[np.ndarray]
    optimizer_variables: list[np.ndarray]
    meta: dict

    def restore(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        """Assign the saved weights and optimizer variables (call inside the strategy's scope)."""
        _assign(f"model weights of {self.path.name}", model.weights, self.model_weights)
        _assign(f"optimizer variables of {self.path.name}", optimizer.variables, self.optimizer_variables)


def _assign(what: str, variables, values: list[np.ndarray]) -> None:
    if len(variables) != len(values):
        raise CheckpointMismatchError(
            f"Checkpoint {what}: expected {len(variables)} arrays for this model/optimizer, found {len(values)}."
        )
    for variable, value in zip(variables, values):
        if tuple(variable.shape) != tuple(value.shape):
            raise CheckpointMismatchError(
                f"Checkpoint {what}: variable '{variable.path}' has shape {tuple(variable.shape)}, "
                f"the checkpoint holds shape {tuple(value.shape)}."
            )
    for variable, value in zip(variables, values):
        variable.assign(value)


class CheckpointStore:
    """Numbered checkpoints in one directory, written atomically, the newest ``keep`` kept."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"Argument `keep` must be a positive integer. Received: keep={keep!r}")
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary files are not listed)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(
        self, epoch: int, model: keras.Model, optimizer: keras.optimizers.Optimizer, meta: dict | None = None
    ) -> Path:
        arrays = {f"model_{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
        arrays.update({f"optimizer_{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
        arrays["meta"] = np.array(json.dumps({**(meta or {}), "epoch": int(epoch)}))
        return self.write(epoch, arrays)

    def write(self, epoch: int, arrays: dict[str, np.ndarray]) -> Path:
        """Write ``arrays`` as checkpoint ``epoch``: temp file, fsync, ``os.replace``, prune."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"ckpt-{epoch:06d}.npz"
        fd, tmp = tempfile.mkstemp(prefix=f".ckpt-{epoch:06d}-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return final

    def load(self, path: str | os.PathLike) -> Checkpoint:
        path = Path(path)
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            model = [data[k] for k in sorted(k for k in data.files if k.startswith("model_"))]
            optimizer = [data[k] for k in sorted(k for k in data.files if k.startswith("optimizer_"))]
        return Checkpoint(path, int(meta["epoch"]), model, optimizer, meta)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads; an unreadable one is skipped with a warning."""
        for path in reversed(self.paths()):
            try:
                return self.load(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
                logger.warning("Skipping unreadable checkpoint %s: %s", path, error)
        return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
