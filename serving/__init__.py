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
    "Predictor": "rnnkit_serving.runtime.predictor",
    "Signature": "rnnkit_serving.core.signature",
    "TensorSpec": "rnnkit_serving.core.signature",
    "Limits": "rnnkit_serving.core.signature",
    "RuntimeOptions": "rnnkit_serving.runtime.backend",
    "Backend": "rnnkit_serving.runtime.backend",
    "FakeBackend": "rnnkit_serving.runtime.backend",
    "ServingError": "rnnkit_serving.errors",
    "ValidationError": "rnnkit_serving.errors",
    "ModelLoadError": "rnnkit_serving.errors",
    "Code": "rnnkit_serving.errors",
    "ModelRegistry": "rnnkit_serving.registry",
    "app": "rnnkit_serving.server.model_server",
    "RestOptions": "rnnkit_serving.fronts.rest.app",
    "ModelServer": "rnnkit_serving.server.model_server",
    "ServerOptions": "rnnkit_serving.server.model_server",
    "start_server": "rnnkit_serving.server.model_server",
    "spawn_server": "rnnkit_serving.server.process",
    "free_port": "rnnkit_serving.server.process",
    "Batcher": "rnnkit_serving.scheduling.batching",
    "BatchingParameters": "rnnkit_serving.config.batching_config",
    "Session": "rnnkit_serving.runtime.streaming",
    "StepGraph": "rnnkit_serving.runtime.streaming",
    "SessionOptions": "rnnkit_serving.scheduling.session_store",
    "SessionStore": "rnnkit_serving.scheduling.session_store",
    "Dispatch": "rnnkit_serving.dispatch",
    "VersionPolicy": "rnnkit_serving.config.model_config",
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
