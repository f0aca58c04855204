"""TF Serving's generated gRPC/proto modules without starting TensorFlow.

The ``tensorflow_serving`` wheel's ``*_pb2`` modules import TensorFlow's proto modules
(``tensorflow.core.framework.tensor_pb2``...). A plain import runs ``tensorflow/__init__.py``
first: about 2 s and 500+ MiB for what are only message classes. The proto modules live in
``tensorflow/core/**`` whose ``__init__.py`` files are empty, so while a bare package object
stands in for ``tensorflow`` (its ``__path__`` pointing at the installed wheel) they load
alone. The stand-in is removed afterwards: a later real ``import tensorflow`` (the TF backend)
runs normally and reuses the same proto modules, so message classes stay identical.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_LOCK = threading.Lock()


def import_proto_modules(*names: str) -> list[types.ModuleType]:
    """Import the named modules (``tensorflow_serving.apis.predict_pb2``, ``tensorflow.core...``)."""
    with _LOCK:
        if "tensorflow" in sys.modules:  # real TensorFlow is loaded (or loading): nothing to avoid
            return [importlib.import_module(name) for name in names]
        spec = importlib.util.find_spec("tensorflow")
        serving_api = importlib.util.find_spec("tensorflow_serving")
        if spec is None or not spec.submodule_search_locations or serving_api is None:
            raise ImportError(
                "the TF Serving gRPC front (--port) needs the tensorflow-serving-api and tensorflow wheels installed "
                "(their proto modules; TensorFlow itself is not started): pip install 'rnnkit[tf-serving]', "
                "or turn it off with --port 0"
            )
        stand_in = types.ModuleType("tensorflow")
        stand_in.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = stand_in
        try:
            return [importlib.import_module(name) for name in names]
        finally:
            if sys.modules.get("tensorflow") is stand_in:
                del sys.modules["tensorflow"]
