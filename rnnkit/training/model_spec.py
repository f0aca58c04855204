"""`ModelSpec`: the model `rnnkit train` builds, as data (Masking -> StackedRNN -> Dense)."""

from __future__ import annotations

import dataclasses

import keras

from rnnkit.layers import StackedRNN
from rnnkit.tasks import Task


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A sequence classifier/regressor made of rnnkit layers.

    ``Input(time, features) -> Masking(0.0) -> StackedRNN(units, num_layers=layers, cell,
    bidirectional, connection, dropout) -> Dense``. The head is ``{"probs": softmax over the
    task's classes}`` for classification and ``{"value": linear, 1 unit}`` for regression.
    Argument checks (``cell``, ``connection``...) are StackedRNN's.
    """

    cell: str = "lstm"
    units: int = 32
    layers: int = 2
    connection: str = "residual"
    bidirectional: bool = False
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> ModelSpec:
        allowed = tuple(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise ValueError(f"ModelSpec: keys must be among {allowed}. Received unknown keys: {unknown}")
        return cls(**config)

    def build(self, task: Task) -> keras.Model:
        # The time axis stays dynamic: the exported model then serves sequences of any length.
        inputs = keras.Input(shape=(None, task.features), name="sequences")
        masked = keras.layers.Masking(mask_value=0.0, name="padding_mask")(inputs)
        encoded = StackedRNN(
            self.units,
            num_layers=self.layers,
            cell=self.cell,
            bidirectional=self.bidirectional,
            connection=self.connection,
            dropout=self.dropout,
            name="encoder",
        )(masked)
        if task.kind == "classification":
            head = {"probs": keras.layers.Dense(task.num_classes, activation="softmax", name="probs")(encoded)}
        else:
            head = {"value": keras.layers.Dense(1, name="value")(encoded)}
        return keras.Model(inputs, head, name=f"rnnkit_{task.name}")
