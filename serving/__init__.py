"""rnnkit serving: a lightweight, TF-Serving-compatible server on ONNX Runtime or TF.

- :class:`Predictor` — one model version, ``predict({name: array}) -> {name: array}``.
- :func:`app` — the TF Serving REST v1 app (Starlette) over a :class:`ModelRegistry`.
- :func:`start_server` / :func:`spawn_server` — run REST + gRPC in this process or a child.

This package never imports keras, rnnkit or export; TensorFlow is imported only by the TF
backend and the gRPC front, when used. Names below are loaded on first use, so
``import serving`` costs only numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Predictor": "serving.predictor",
    "Signature": "serving.signature",
    "TensorSpec": "serving.signature",
    "Limits": "serving.signature",
    "RuntimeOptions": "serving.backend",
    "Backend": "serving.backend",
    "FakeBackend": "serving.backend",
    "ServingError": "serving.errors",
    "ValidationError": "serving.errors",
    "ModelLoadError": "serving.errors",
    "Code": "serving.errors",
    "ModelRegistry": "serving.registry",
    "app": "serving.rest",
    "RestOptions": "serving.rest",
    "ModelServer": "serving.server",
    "ServerOptions": "serving.server",
    "start_server": "serving.server",
    "spawn_server": "serving.process",
    "free_port": "serving.process",
    "Batcher": "serving.batching",
    "BatchingParameters": "serving.batching_config",
    "Session": "serving.streaming",
    "StepGraph": "serving.streaming",
    "SessionOptions": "serving.session_store",
    "SessionStore": "serving.session_store",
    "Dispatch": "serving.dispatch",
    "VersionPolicy": "serving.model_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
