"""TensorFlow SavedModel backend: one signature of a version's ``saved_model.pb``.

TensorFlow is imported here, inside the constructor, and only when this backend is chosen;
the ONNX Runtime path never pays for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnnkit_serving.core.repository_format import SAVED_MODEL_FILE
from rnnkit_serving.core.signature import Signature
from rnnkit_serving.errors import ModelLoadError
from rnnkit_serving.runtime.backend import DEFAULT_RUNTIME, RuntimeOptions

log = logging.getLogger("rnnkit.serving")

_LOADED: dict[str, Any] = {}  # one tf.saved_model per version dir, shared by its signatures


def _configure_threads(tf: Any, options: RuntimeOptions) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads)
    except RuntimeError:
        pass  # TF is already initialised in this process: its thread pools are fixed


class TFBackend:
    def __init__(
        self, version_dir: str, signature: Signature, device: str = "cpu", options: RuntimeOptions = DEFAULT_RUNTIME
    ) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if not os.path.isfile(os.path.join(version_dir, SAVED_MODEL_FILE)):
            raise ModelLoadError(f"{version_dir!r} has no {SAVED_MODEL_FILE}")
        _configure_threads(tf, options)
        self._tf = tf
        self._signature = signature
        self._fallback: str | None = None
        gpus = tf.config.list_logical_devices("GPU") if device in ("gpu", "auto") else []
        if device == "gpu" and not gpus:
            self._fallback = "TensorFlow sees no GPU; running on CPU"
            if options.strict_device:
                raise ModelLoadError(f"device 'gpu' requested but {self._fallback}")
            log.warning("%s", self._fallback)
        self._device = "/GPU:0" if gpus else "/CPU:0"
        try:
            with tf.device(self._device):
                loaded = _LOADED.get(version_dir) or tf.saved_model.load(version_dir, tags=["serve"])
        except Exception as error:  # TF raises many types for corrupt or foreign SavedModels
            raise ModelLoadError(f"TensorFlow cannot load {version_dir!r}: {error}") from error
        _LOADED[version_dir] = loaded
        if signature.name not in loaded.signatures:
            raise ModelLoadError(f"{version_dir!r} has no signature {signature.name!r}")
        self._loaded = loaded
        self._function = loaded.signatures[signature.name]
        self._version_dir = version_dir

    def signature(self) -> Signature:
        return self._signature

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._tf.device(self._device):
            result = self._function(**{name: self._tf.constant(value) for name, value in inputs.items()})
        return {name: result[name].numpy() for name in self._signature.output_names}

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "tensorflow",
            "version": self._tf.__version__,
            "device": "gpu" if self._device.startswith("/GPU") else "cpu",
            "fallback": self._fallback,
        }

    def close(self) -> None:
        _LOADED.pop(self._version_dir, None)
