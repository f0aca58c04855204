"""rnnkit: recurrent networks on Keras 3 / TensorFlow, from the equations to serving.

Importing the package registers its Keras classes (the layers of :mod:`rnnkit.layers` and the
gradient-recording optimizers of :mod:`rnnkit.training.optimizer`), so
``import keras, rnnkit; keras.saving.load_model("model.keras")`` loads a model built with them,
as ``import keras_hub`` does for its own. This loads Keras and TensorFlow; the command line
(:mod:`rnnkit_cli`, the ``rnnkit`` console script) does not import this package for
``rnnkit serve``, which therefore starts without them.
"""

__version__ = "0.1.0"

try:
    from rnnkit import layers  # noqa: E402  (registers the layers with Keras)
    from rnnkit.training import optimizer as _optimizer  # noqa: E402, F401  (registers the optimizers)
except ModuleNotFoundError as _error:
    if _error.name not in ("keras", "tensorflow", "matplotlib", "tqdm"):
        raise
    raise ModuleNotFoundError(
        f"rnnkit's layers and training need Keras and TensorFlow ({_error.name!r} is not installed): "
        "pip install 'rnnkit[keras]' (the ONNX server alone is 'rnnkit[serve]')",
        name=_error.name,
    ) from None

__all__ = ["layers"]
