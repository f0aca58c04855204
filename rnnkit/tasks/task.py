"""The `Task` record every built-in generator returns, and the registry that builds one by name."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import numpy as np

TASK_KINDS = ("classification", "regression")


@dataclasses.dataclass(frozen=True)
class Task:
    """A supervised sequence task held in memory.

    ``x_*`` are float32 arrays ``(examples, time, features)``; all-zero time steps are padding
    (``keras.layers.Masking(0.0)`` masks them), real steps are never all zero. ``y_*`` are int32
    class ids ``(examples,)`` for ``kind="classification"`` and float32 targets ``(examples,)`` for
    ``kind="regression"``. A regression prediction counts as correct ("accuracy") when it is within
    ``tolerance`` of the target.
    """

    name: str
    kind: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int | None = None
    tolerance: float | None = None
    vocabulary: tuple[str, ...] = ()
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"Task '{self.name}': `kind` must be one of {TASK_KINDS}. Received: kind={self.kind!r}")

    @property
    def features(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def length(self) -> int:
        return int(self.x_train.shape[1])


# name -> (generator(examples, seed, **params) -> (x, y), Task keyword arguments)
_GENERATORS: dict[str, tuple[Callable[..., tuple[np.ndarray, np.ndarray]], dict]] = {}


def register_task(name: str, **task_kwargs) -> Callable:
    """Decorator: make a generator ``fn(examples, seed, **params) -> (x, y)`` available to `make_task`."""

    def register(fn: Callable) -> Callable:
        _GENERATORS[name] = (fn, task_kwargs)
        return fn

    return register


def task_names() -> tuple[str, ...]:
    return tuple(_GENERATORS)


def make_task(name: str, *, train_examples: int = 2000, val_examples: int = 500, seed: int = 0, **params) -> Task:
    """Build a built-in task by name: ``"adding"``, ``"copy"``, ``"anbn"`` or ``"sentiment"``.

    Training and validation sets come from independent streams of one seed, so the same
    arguments always give the same arrays. ``params`` go to the generator (``length`` for
    adding/sentiment, ``lag`` and ``vocab_size`` for copy, ``max_n`` for anbn, ``window`` for
    sentiment).
    """
    if name not in _GENERATORS:
        raise ValueError(f"Argument `task` must be one of {task_names()}. Received: task={name!r}")
    for arg, value in (("train_examples", train_examples), ("val_examples", val_examples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Argument `{arg}` must be a positive integer. Received: {arg}={value!r}")
    fn, task_kwargs = _GENERATORS[name]
    accepted = tuple(p for p in inspect.signature(fn).parameters if p not in ("examples", "seed"))
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        received = ", ".join(f"{k}={params[k]!r}" for k in unknown)
        raise ValueError(f"Task '{name}' takes parameters {accepted}. Received: {received}")
    x_train, y_train = fn(train_examples, seed=[seed, 0], **params)
    x_val, y_val = fn(val_examples, seed=[seed, 1], **params)
    task_kwargs = dict(task_kwargs)
    vocabulary = task_kwargs.pop("vocabulary", ())
    num_classes = task_kwargs.pop("num_classes", None)
    if callable(num_classes):
        num_classes = num_classes(**params)
    if callable(vocabulary):
        vocabulary = vocabulary(**params)
    return Task(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        num_classes=num_classes,
        vocabulary=tuple(vocabulary),
        params=dict(params),
        **task_kwargs,
    )


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Validate a generator size argument (``examples``, ``length``, ``lag``...)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Argument `{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def one_hot(ids: np.ndarray, depth: int) -> np.ndarray:
    """Integer ids ``(..., )`` -> float32 one-hot ``(..., depth)``; id -1 gives an all-zero (padding) row."""
    out = np.zeros((*ids.shape, depth), dtype="float32")
    rows = ids >= 0
    out[rows, ids[rows]] = 1.0
    return out
