"""Names, dtypes and shapes of a Keras model's inputs and outputs, and a dict-in/dict-out call.

Names are stable across every artifact (ARCHITECTURE.md contract 4): inputs keep their
``keras.Input`` names (or dict keys), outputs keep their dict keys, else the output layer names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TensorInfo:
    """One input or output: its stable name, numpy dtype name and shape (None: dynamic axis)."""

    name: str
    dtype: str  # numpy dtype name
    shape: list[int | None]  # None = dynamic (batch, time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelIO:
    """A model's inputs and outputs by name, and the structure its ``call`` takes and returns
    (``"dict"``, ``"list"`` or ``"single"``), so that `call` is dict in, dict out."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    input_structure: str  # "dict" | "list" | "single"
    output_structure: str

    @classmethod
    def of(cls, model: Any) -> ModelIO:
        graph = getattr(model, "_functional", None) or model  # a Sequential model keeps its graph there
        in_struct = getattr(graph, "_inputs_struct", None)
        out_struct = getattr(graph, "_outputs_struct", None)
        if in_struct is None or out_struct is None:
            raise ValueError(
                f"model {getattr(model, 'name', model)!r}: expected a functional or sequential Keras model "
                "with known inputs and outputs (subclassed models have none until called)."
            )
        if isinstance(in_struct, dict):
            in_kind, in_items = "dict", list(in_struct.items())
        elif isinstance(in_struct, (list, tuple)):
            in_kind, in_items = "list", [(t.name, t) for t in in_struct]
        else:
            in_kind, in_items = "single", [(in_struct.name, in_struct)]
        if isinstance(out_struct, dict):
            out_kind, out_items = "dict", list(out_struct.items())
        else:
            tensors = list(out_struct) if isinstance(out_struct, (list, tuple)) else [out_struct]
            out_kind = "list" if isinstance(out_struct, (list, tuple)) else "single"
            names = _unique(list(graph.output_names))
            out_items = list(zip(names, tensors))
        if not in_items:
            raise ValueError(f"model {model.name!r} has no inputs")
        return cls(
            [_info(name, t) for name, t in in_items],
            [_info(name, t) for name, t in out_items],
            in_kind,
            out_kind,
        )

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def arrange(self, named: dict[str, Any]) -> Any:
        """Inputs by name -> the structure the model's call expects."""
        if self.input_structure == "dict":
            return {name: named[name] for name in self.input_names}
        if self.input_structure == "list":
            return [named[name] for name in self.input_names]
        return named[self.input_names[0]]

    def name_outputs(self, result: Any) -> dict[str, Any]:
        """The model's return value -> outputs by name."""
        if self.output_structure == "dict":
            return {name: result[name] for name in self.output_names}
        values = list(result) if self.output_structure == "list" else [result]
        return dict(zip(self.output_names, values))

    def call(self, model: Any, named: dict[str, Any], training: bool = False) -> dict[str, Any]:
        return self.name_outputs(model(self.arrange(named), training=training))

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}


def _info(name: str, tensor: Any) -> TensorInfo:
    import numpy as np

    return TensorInfo(str(name), np.dtype(tensor.dtype).name, [None if d is None else int(d) for d in tensor.shape])


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        out.append(name if count == 0 else f"{name}_{count}")
        seen[name] = count + 1
    return out
