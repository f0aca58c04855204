"""ONNX Runtime backend: ``model.onnx`` (``serving_default``) or ``step.onnx`` (``step``) of a version.

CPU by default. ``device="gpu"`` asks for the CUDA execution provider; when ONNX Runtime
has none (or drops it while building the session) the backend runs on CPU, logs a warning
and reports the fallback in :meth:`describe` (hence in the status and metadata endpoints),
unless ``strict_device`` makes that an error.

Thread defaults come from measurements on a 2-core CPU (docs/benchmarks/performance.md): one intra-op
thread is the best default for batch-1 recurrent work, where the time loop is sequential and a
second thread mostly adds synchronisation; raise ``intra_op_threads`` for large batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnkit_serving.core.repository_format import INT8_EXACT_SESSION_CONFIG
from rnnkit_serving.core.signature import Signature
from rnnkit_serving.errors import ModelLoadError
from rnnkit_serving.runtime.backend import DEFAULT_RUNTIME, RuntimeOptions

log = logging.getLogger("rnnkit.serving")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class OnnxBackend:
    def __init__(
        self, path: str, signature: Signature, device: str = "cpu", options: RuntimeOptions = DEFAULT_RUNTIME
    ) -> None:
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise ModelLoadError(f"ONNX file {path!r} does not exist")
        self._signature = signature
        self._path = path
        self._fallback: str | None = None
        available = ort.get_available_providers()
        providers = [CPU]
        if device in ("gpu", "auto"):
            if CUDA in available:
                providers = [CUDA, CPU]
            else:
                self._fallback = f"{CUDA} is not available (ONNX Runtime providers: {available}); running on CPU"
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        # exact int8 kernels on CPUs without VNNI, as the export gate judged the variant (the contract)
        session_options.add_session_config_entry(*INT8_EXACT_SESSION_CONFIG)
        try:
            self._session = ort.InferenceSession(path, sess_options=session_options, providers=providers)
        except Exception as error:  # ORT raises its own exception types for bad files and missing libraries
            raise ModelLoadError(f"ONNX Runtime cannot load {path!r}: {error}") from error
        self._providers = list(self._session.get_providers())
        if CUDA in providers and CUDA not in self._providers:
            self._fallback = f"{CUDA} failed to initialise for {path!r}; running on CPU"
        if self._fallback is not None:
            if device == "gpu" and options.strict_device:
                raise ModelLoadError(f"device 'gpu' requested but {self._fallback}")
            level = logging.WARNING if device == "gpu" else logging.INFO
            log.log(level, "%s", self._fallback)
            if device == "auto":
                self._fallback = None  # auto means "GPU if there is one": CPU is not a fallback
        graph_inputs = {i.name for i in self._session.get_inputs()}
        graph_outputs = {o.name for o in self._session.get_outputs()}
        missing = [n for n in signature.input_names if n not in graph_inputs] + [
            n for n in signature.output_names if n not in graph_outputs
        ]
        if missing:
            raise ModelLoadError(f"{path!r} lacks the tensors {missing} named by the manifest")
        self._output_names = signature.output_names
        self._device = "gpu" if CUDA in self._providers else "cpu"

    def signature(self) -> Signature:
        return self._signature

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, values))

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "onnxruntime",
            "file": os.path.basename(self._path),
            "device": self._device,
            "providers": self._providers,
            "fallback": self._fallback,
        }

    def close(self) -> None:
        self._session = None
