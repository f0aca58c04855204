"""A model whose rnnkit layers ask for cuDNN in every call (`use_cudnn=True`) still gets a SavedModel
traced through the cell loop: the backend's fused kernel is never called while the signatures are
traced, so the SavedModel holds no GPU-only op."""

import keras
import numpy as np
from keras.src import backend as keras_backend

import rnnkit_export
import rnnkit_export.savedmodel.writer
from rnnkit import layers as rk


def test_savedmodel_trace_never_calls_the_cudnn_kernel(monkeypatch, tmp_path):
    inputs = keras.Input((None, 3), name="x")
    lstm = rk.LSTM(4, name="lstm")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(lstm(inputs)))
    kernel_calls = []

    def kernel(*args, **kwargs):
        kernel_calls.append(1)
        raise NotImplementedError  # what the backend answers without a GPU

    real_write = rnnkit_export.savedmodel.writer._write_savedmodel

    def write_with_cudnn_requested(*args, **kwargs):
        # use_cudnn=True cannot run on this CPU at all, so it is switched on for the trace only.
        lstm.use_cudnn = True
        try:
            return real_write(*args, **kwargs)
        finally:
            lstm.use_cudnn = "auto"

    monkeypatch.setattr(keras_backend, "lstm", kernel)
    monkeypatch.setattr(rnnkit_export.savedmodel.writer, "_write_savedmodel", write_with_cudnn_requested)
    report = rnnkit_export.export_model(model, str(tmp_path), "m", formats="savedmodel")
    assert kernel_calls == [] and report.signatures
    # the check itself works: outside the export, use_cudnn=True reaches the kernel
    lstm.use_cudnn = True
    try:
        lstm(np.zeros((1, 2, 3), "float32"))
    except ValueError as error:
        assert "use_cudnn=True" in str(error)
    assert kernel_calls == [1]
