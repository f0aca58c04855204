"""Experiments that measure the lecture's claims on rnnkit's own layers, tasks and trainer.

| name | claim | module |
|---|---|---|
| ``vanishing`` | a vanilla RNN's gradient norm falls geometrically with the lag | `vanishing` |
| ``memory_span`` | usable memory: ~7 steps for a vanilla RNN, ~100 for an LSTM (adding problem, copy) | `memory_span` |
| ``clipping`` | global-norm clipping (and the non-finite guard) tames exploding gradients | `clipping` |
| ``counting`` | LSTMs learn to count (aⁿbⁿ) past the training range, GRUs do not | `counting` |
| ``bidirectional`` | context from both sides helps when the label depends on it | `bidirectional` |
| ``depth`` | skip connections keep deep stacks trainable | `depth` |

Each module has one ``run_<name>(quick=False, seed=0, out_dir=...) -> dict`` that prints a
table and writes ``<name>.json`` and ``<name>.png`` into ``out_dir``; `run_experiment` finds it
by name (``rnnkit bench NAME``, ``bench/<name>.py``). Modules are imported only when run.
``memory_span``, ``counting`` and ``depth`` train on a fresh generated batch every step over
several seeds (`fresh_batches`); their docstrings cite the papers whose protocols they follow.
"""

from rnnkit.experiments.runner import EXPERIMENTS, experiment_names, run_experiment

__all__ = ["EXPERIMENTS", "experiment_names", "run_experiment"]
