"""rnnkit serving: a lightweight, TF-Serving-compatible server on ONNX Runtime or TF.

Not implemented yet (see the serving issues). This package must never import keras,
rnnkit or export, and must not import tensorflow on the ONNX Runtime path.
"""
