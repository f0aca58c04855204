"""The backend interface: one runtime graph behind ``predict(dict) -> dict``.

A backend runs one signature of one model version. It receives inputs already validated
against :meth:`Backend.signature` (names, dtypes, shapes) and returns every output by name.
Backends know nothing of HTTP, gRPC or JSON (like an httpx transport); :class:`FakeBackend`
is the in-memory double for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rnnkit_serving.core import defaults
from rnnkit_serving.core.signature import Signature, numpy_dtype

# --backend, --device and --variant choices (one place: rnnkit_serving.core.defaults)
BACKENDS = defaults.BACKENDS
DEVICES = defaults.DEVICES
VARIANTS = defaults.RUNTIME_VARIANTS


@dataclass(frozen=True)
class RuntimeOptions:
    """Runtime knobs shared by the backends (``0`` threads = the runtime's own default)."""

    intra_op_threads: int = defaults.INTRA_OP_THREADS  # --intra_op_threads
    inter_op_threads: int = defaults.INTER_OP_THREADS  # --inter_op_threads
    strict_device: bool = False  # --strict_device
    variant: str = defaults.VARIANT  # --variant, one of VARIANTS (int8/fp16: ONNX backend only)


DEFAULT_RUNTIME = RuntimeOptions()


@runtime_checkable
class Backend(Protocol):
    def signature(self) -> Signature:
        """Names, dtypes and shapes this backend takes and returns."""
        ...

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on validated inputs; every output of the signature, by name."""
        ...

    def describe(self) -> dict[str, Any]:
        """Runtime facts for status/metadata: runtime, device, providers, fallback (or None)."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; later calls to predict are errors."""
        ...


class FakeBackend:
    """A backend computed by a Python function, for tests of everything above the runtime.

    ``fn`` gets the validated inputs and returns the outputs; by default every output is
    zeros of batch size and the output spec's fixed dims (dynamic non-batch dims become 1).
    """

    def __init__(
        self,
        signature: Signature,
        fn: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        self._signature = signature
        self._fn = fn
        self.calls = 0
        self.closed = False

    def signature(self) -> Signature:
        return self._signature

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise RuntimeError("FakeBackend is closed")
        self.calls += 1
        if self._fn is not None:
            return dict(self._fn(inputs))
        batch = next(iter(inputs.values())).shape[0] if inputs else 1
        return {
            spec.name: np.zeros(
                (batch, *(1 if d is None else d for d in spec.shape[1:])), dtype=numpy_dtype(spec.dtype)
            )
            for spec in self._signature.outputs
        }

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake", "device": "cpu", "fallback": None}

    def close(self) -> None:
        self.closed = True
