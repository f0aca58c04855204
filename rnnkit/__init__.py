"""rnnkit: recurrent networks on Keras 3 / TensorFlow, from the equations to serving."""

__version__ = "0.1.0"
