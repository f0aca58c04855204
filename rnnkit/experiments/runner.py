"""The experiment registry and what every experiment shares: quiet training, tables, JSON, figures."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Where an experiment lives (``module.function``) and the claim it measures."""

    module: str
    function: str
    claim: str

    def load(self) -> Callable[..., dict]:
        return getattr(importlib.import_module(self.module), self.function)


EXPERIMENTS = {
    "vanishing": Experiment(
        "rnnkit.experiments.vanishing", "run_vanishing", "a vanilla RNN's gradient norm falls geometrically with lag"
    ),
    "memory_span": Experiment(
        "rnnkit.experiments.memory_span", "run_memory_span", "usable memory ~7 steps (vanilla RNN), ~100 (LSTM)"
    ),
    "clipping": Experiment(
        "rnnkit.experiments.clipping", "run_clipping", "global-norm clipping and the guard tame exploding gradients"
    ),
    "counting": Experiment(
        "rnnkit.experiments.counting", "run_counting", "LSTMs learn to count aⁿbⁿ past the training n, GRUs do not"
    ),
    "bidirectional": Experiment(
        "rnnkit.experiments.bidirectional", "run_bidirectional", "bidirectional layers help two-sided context"
    ),
    "depth": Experiment(
        "rnnkit.experiments.depth", "run_depth", "skip connections keep deep stacks trainable (2/4/8 layers)"
    ),
}


def experiment_names() -> tuple[str, ...]:
    return tuple(EXPERIMENTS)


def default_out_dir(name: str) -> Path:
    return Path("bench") / "out" / name


def run_experiment(name: str, *, quick: bool = False, seed: int = 0, out_dir: str | os.PathLike | None = None) -> dict:
    """Run one experiment by name; returns its numbers (also in ``out_dir/<name>.json``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"Argument `name` must be one of {experiment_names()}. Received: name={name!r}")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(name)
    experiment = EXPERIMENTS[name]
    print(f"== {name}: {experiment.claim} ({'quick' if quick else 'full'}, seed {seed}) ==", flush=True)
    results = experiment.load()(quick=quick, seed=seed, out_dir=out_dir)
    print(f"{name}: {results['seconds']:.0f} s; wrote {out_dir / (name + '.json')}, {out_dir / (name + '.png')}")
    return results


# -- training ------------------------------------------------------------------------------------
def train_quietly(model_or_spec, task, epochs: int, *, stop_at: float | None = None, callbacks=(), **kwargs) -> dict:
    """`rnnkit.training.train` into a temporary directory, no progress bar, no guard warnings.

    ``stop_at``: stop after the first epoch whose validation accuracy reaches it. Returns
    ``{"history": {key: [per epoch]}, "recovery_events": [...], "diverged": None | message}``;
    a run the guard gives up on keeps the history of its latest checkpoint.
    """
    from rnnkit.training import TrainingDivergedError, train

    callbacks = list(callbacks)
    if stop_at is not None:
        callbacks.append(StopAtAccuracy(stop_at))
    training_logger = logging.getLogger("rnnkit.training")
    level = training_logger.level
    training_logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="rnnkit-experiment-") as out:
            try:
                history = train(model_or_spec, task, epochs, out, verbose=0, callbacks=callbacks, **kwargs)
                return {"history": history.history, "recovery_events": _events(out), "diverged": None}
            except TrainingDivergedError as error:
                saved = json.loads((Path(out) / "history.json").read_text())
                return {
                    "history": saved["history"],
                    "recovery_events": saved["recovery_events"],
                    "diverged": str(error),
                }
    finally:
        training_logger.setLevel(level)


def _events(out: str) -> list[dict]:
    return json.loads((Path(out) / "history.json").read_text())["recovery_events"]


class StopAtAccuracy(keras.callbacks.Callback):
    """Stop training after an epoch whose ``val_accuracy`` is at least ``target``."""

    def __init__(self, target: float):
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch, logs=None):
        if logs and logs.get("val_accuracy", 0.0) >= self.target:
            self.model.stop_training = True


# -- reporting -----------------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain-text table; floats with 4 significant digits, None as '-'."""

    def text(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if math.isfinite(value) else str(value)
        return str(value)

    cells = [[text(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = " | ".join(f"{h:>{w}}" for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += [" | ".join(f"{c:>{w}}" for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def jsonable(value):
    """NumPy scalars/arrays to Python; NaN and Inf to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def new_figure(panels: int = 1, size: tuple[float, float] = (6.0, 4.2)):
    """A bare Agg ``Figure`` with ``panels`` side-by-side axes (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] * panels, size[1]))
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, panels, i + 1) for i in range(panels)]
    return figure, axes


class Report:
    """Collects one experiment's output: started on creation, `finish` prints and writes it all."""

    def __init__(self, name: str, *, quick: bool, seed: int, out_dir: str | os.PathLike, config: dict):
        self.name = name
        self.quick = quick
        self.seed = seed
        self.out_dir = Path(out_dir)
        self.config = config
        self.started = time.perf_counter()

    @property
    def plot_path(self) -> Path:
        return self.out_dir / f"{self.name}.png"

    def finish(self, table: str, figure, results: dict, notes: Sequence[str] = ()) -> dict:
        """Print the table (and notes), save ``figure`` as ``<name>.png`` (``None``: the caller
        already wrote `plot_path`) and the numbers as ``<name>.json``; return the numbers."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        print(table)
        for note in notes:
            print(note)
        if figure is not None:
            figure.tight_layout()
            figure.savefig(self.plot_path, dpi=110)
        results = {**results, "seconds": round(time.perf_counter() - self.started, 1)}
        payload = {
            "experiment": self.name,
            "quick": self.quick,
            "seed": self.seed,
            "config": self.config,
            "table": table,
            "notes": list(notes),
            "results": results,
        }
        (self.out_dir / f"{self.name}.json").write_text(json.dumps(jsonable(payload), indent=2))
        return jsonable(results)
