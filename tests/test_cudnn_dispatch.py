"""cuDNN dispatch of rnnkit.layers.LSTM/GRU, checked on CPU.

1. The decision for every configuration, against Keras's own argument check.
2. The layers call the same backend function as keras.layers with the same arguments (the
   cell's weights in Keras's layout), and fall back when it answers "not supported".
3. With cuDNN's kernel emulated here in NumPy (CudnnRNNV3's documented semantics: canonical
   parameter layout, per-row sequence lengths, zeros past them), the fused path gives the cell
   path's outputs for every mask/direction/output option; CPU outputs are unchanged.
"""

import importlib
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src import backend as keras_backend

from rnnkit import layers as rk
from rnnkit.layers import cudnn

tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")  # the package re-exports a function `rnn`

ACTIVATIONS = ("tanh", "relu")
RECURRENT_ACTIVATIONS = ("sigmoid", "hard_sigmoid")


# -- 1. the decision -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_decision_for_every_configuration_matches_keras_plus_rnnkit_conditions(kind):
    if kind == "lstm":
        extra_options = [{"use_peepholes": False}, {"use_peepholes": True}]
    else:
        extra_options = [{"reset_after": True}, {"reset_after": False}]
    checked = 0
    for activation, recurrent_activation, use_bias, unroll, recurrent_dropout, extra, use_cudnn in itertools.product(
        ACTIVATIONS, RECURRENT_ACTIVATIONS, (True, False), (False, True), (0.0, 0.25), extra_options, cudnn.USE_CUDNN
    ):
        cls = rk.LSTM if kind == "lstm" else rk.GRU
        layer = cls(
            4,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            unroll=unroll,
            recurrent_dropout=recurrent_dropout,
            use_cudnn=use_cudnn,
            **extra,
        )
        cell = layer.cell
        if kind == "lstm":
            keras_ok = tf_rnn._do_lstm_arguments_support_cudnn(
                cell.activation, cell.recurrent_activation, unroll, use_bias
            )
            own_ok = not extra["use_peepholes"]
        else:
            keras_ok = tf_rnn._do_gru_arguments_support_cudnn(
                cell.activation, cell.recurrent_activation, unroll, use_bias, extra["reset_after"]
            )
            own_ok = True
        expected = keras_ok and own_ok and recurrent_dropout == 0.0 and use_cudnn is not False
        blockers = layer.cudnn_blockers()
        assert (not blockers) == expected, (
            activation,
            recurrent_activation,
            use_bias,
            unroll,
            recurrent_dropout,
            extra,
            use_cudnn,
            blockers,
        )
        checked += 1
    assert checked == 2 * 2 * 2 * 2 * 2 * 2 * 3


def test_blocker_messages_name_the_setting():
    assert rk.SimpleRNN(3).cudnn_blockers() == ["SimpleRNN has no cuDNN kernel"]
    assert rk.LSTM(3, use_peepholes=True).cudnn_blockers() == ["use_peepholes=True"]
    assert rk.GRU(3, reset_after=False, use_cudnn=False).cudnn_blockers() == [
        "use_cudnn=False",
        "reset_after=False (cuDNN computes the reset-after form)",
    ]
    assert rk.LSTM(3, activation="relu").cudnn_blockers() == ["activation=relu (cuDNN needs tanh)"]
    with pytest.raises(
        ValueError,
        match=r"LSTM 'x': argument `use_cudnn` must be one of \('auto', True, False\)\. Received: use_cudnn=1",
    ):
        rk.LSTM(3, use_cudnn=1, name="x")


# -- 2. the backend call --------------------------------------------------------------------------
class Recorder:
    """Stands in for keras's backend lstm/gru: records each call, answers "not supported"."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        kwargs = {
            k: (np.array(v) if hasattr(v, "numpy") or isinstance(v, keras.Variable) else v) for k, v in kwargs.items()
        }
        self.calls.append(([np.array(a) if a is not None else None for a in args], kwargs))
        raise NotImplementedError


def pair(kind, **options):
    """(rnnkit layer, keras layer) with the same configuration and weights, built."""
    rk_cls, keras_cls = (rk.LSTM, keras.layers.LSTM) if kind == "lstm" else (rk.GRU, keras.layers.GRU)
    ours, theirs = rk_cls(5, **options), keras_cls(5, **options)
    x = np.random.default_rng(0).normal(size=(3, 6, 4)).astype("float32")
    ours(x), theirs(x)
    theirs.set_weights(
        [np.random.default_rng(1).normal(size=w.shape).astype("float32") * 0.3 for w in theirs.get_weights()]
    )
    ours.set_weights(theirs.get_weights())
    return ours, theirs, x


def right_padded_mask(batch=3, time=6):
    lengths = np.array([6, 4, 1][:batch])
    return np.arange(time)[None, :] < lengths[:, None]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("options", [{}, {"return_sequences": True, "go_backwards": True}])
def test_layers_call_the_same_backend_kernel_as_keras_with_the_same_arguments(monkeypatch, kind, options):
    recorder = Recorder()
    monkeypatch.setattr(keras_backend, kind, recorder)
    ours, theirs, x = pair(kind, **options)
    recorder.calls.clear()  # the calls that built the layers
    mask = right_padded_mask()
    out_ours = ours(x, mask=mask, training=True)
    out_theirs = theirs(x, mask=mask, training=True)
    assert len(recorder.calls) == 2  # one each, then both fell back to their step loops
    (args_ours, kw_ours), (args_theirs, kw_theirs) = recorder.calls
    assert kw_ours.keys() == kw_theirs.keys()
    for key in kw_ours:
        if key in ("activation", "recurrent_activation"):
            assert kw_ours[key] is kw_theirs[key], key
        else:
            np.testing.assert_array_equal(kw_ours[key], kw_theirs[key], err_msg=key)
    for a, b in zip(args_ours, args_theirs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(out_ours, out_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("lstm", {"use_peepholes": True}),
        ("lstm", {"recurrent_dropout": 0.2}),
        ("lstm", {"use_cudnn": False}),
        ("gru", {"reset_after": False}),
        ("gru", {"activation": "relu"}),
        ("gru", {"unroll": True}),
    ],
)
def test_blocked_configurations_never_call_the_backend_kernel(monkeypatch, kind, options):
    recorder = Recorder()
    monkeypatch.setattr(keras_backend, kind, recorder)
    layer = (rk.LSTM if kind == "lstm" else rk.GRU)(5, **options)
    layer(np.ones((2, 3, 4), "float32"), training=True)
    assert recorder.calls == []


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_backend_not_supported_falls_back_and_use_cudnn_true_says_why(monkeypatch, kind):
    # Make Keras's backend believe a GPU is there: it then tries CudnnRNNV3, which has no CPU
    # kernel, and answers NotImplementedError. The layer must fall back to the cell's loop.
    monkeypatch.setattr(tf_rnn, "_is_gpu_available", lambda: True)
    original = getattr(keras_backend, kind)
    answers = []

    def watched(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except NotImplementedError:
            answers.append("not supported")
            raise

    monkeypatch.setattr(keras_backend, kind, watched)
    ours, theirs, x = pair(kind, return_sequences=True)
    reference = (rk.LSTM if kind == "lstm" else rk.GRU)(5, return_sequences=True, use_cudnn=False)
    reference(x)
    reference.set_weights(ours.get_weights())
    answers.clear()  # the calls that built the layers
    np.testing.assert_allclose(ours(x, training=True), reference(x), rtol=1e-6, atol=1e-6)
    assert answers == ["not supported"]
    strict = (rk.LSTM if kind == "lstm" else rk.GRU)(5, use_cudnn=True, name="strict")
    with pytest.raises(
        ValueError,
        match=r"'strict': use_cudnn=True, but cuDNN cannot run this layer: the backend has no cuDNN kernel here .*use_cudnn='auto'",
    ):
        strict(x)


def test_export_trace_and_cell_loop_only_keep_the_cell_loop(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(keras_backend, "lstm", recorder)
    layer = rk.LSTM(3)
    x = np.ones((2, 3, 4), "float32")
    with cudnn.cell_loop_only():
        layer(x, training=True)
    with rk.trace_substitution(lambda *args: NotImplemented):
        layer(x, training=True)
    assert recorder.calls == []
    layer(x, training=True)
    assert len(recorder.calls) == 1


def test_auto_takes_the_kernel_in_training_calls_only_true_in_every_call(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(keras_backend, "gru", recorder)
    x = np.ones((2, 3, 4), "float32")
    auto = rk.GRU(3)
    auto(x)  # inference: the portable loop (what a SavedModel traced on a GPU machine holds)
    assert recorder.calls == []
    auto(x, training=True)
    assert len(recorder.calls) == 1
    strict = rk.GRU(3, use_cudnn=True)
    with pytest.raises(ValueError, match="use_cudnn=True, but cuDNN cannot run this layer"):
        strict(x)  # the recorder answers "not supported"
    assert len(recorder.calls) == 2


# -- 3. the fused path, with cuDNN's kernel emulated ----------------------------------------------------
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def emulated_cudnn_rnn_v3(x, h, c, params, lengths, rnn_mode):
    """CudnnRNNV3, one layer, one direction, batch-major, from cuDNN's documented semantics:
    params = input weights (gate, in), recurrent weights (gate, units) per gate, then input
    biases and recurrent biases per gate; LSTM gates (i, f, c, o); GRU gates (r, z, h) with
    h~ = tanh(W_h x + b_Wh + r * (R_h h + b_Rh)), h = (1 - z) * h~ + z * h. Rows stop at their
    sequence length; outputs past it are zeros; the returned state is the one at the length."""
    x, params = np.asarray(x, "float64"), np.asarray(params, "float64")
    batch, time, features = x.shape
    h, c = np.asarray(h, "float64")[:, 0, :], np.asarray(c, "float64")[:, 0, :]
    units = h.shape[-1]
    gates = 4 if rnn_mode == "lstm" else 3
    sizes = [units * features] * gates + [units * units] * gates + [units] * (2 * gates)
    pieces = np.split(params, np.cumsum(sizes)[:-1])
    w = [pieces[g].reshape(units, features) for g in range(gates)]
    r = [pieces[gates + g].reshape(units, units) for g in range(gates)]
    bw, br = pieces[2 * gates : 3 * gates], pieces[3 * gates : 4 * gates]
    outputs = np.zeros((batch, time, units))
    for t in range(time):
        live = (t < np.asarray(lengths))[:, None]
        xt = x[:, t, :]
        if rnn_mode == "lstm":
            z = [xt @ w[g].T + bw[g] + h @ r[g].T + br[g] for g in range(4)]
            c_new = _sigmoid(z[1]) * c + _sigmoid(z[0]) * np.tanh(z[2])
            h_new = _sigmoid(z[3]) * np.tanh(c_new)
            c = np.where(live, c_new, c)
        else:
            reset = _sigmoid(xt @ w[0].T + bw[0] + h @ r[0].T + br[0])
            update = _sigmoid(xt @ w[1].T + bw[1] + h @ r[1].T + br[1])
            candidate = np.tanh(xt @ w[2].T + bw[2] + reset * (h @ r[2].T + br[2]))
            h_new = (1.0 - update) * candidate + update * h
        h = np.where(live, h_new, h)
        outputs[:, t, :] = np.where(live, h_new, 0.0)
    return [np.asarray(v, "float32") for v in (outputs, h[:, None, :], c[:, None, :])]


@pytest.fixture
def emulated_cudnn(monkeypatch):
    """Keras's backend sees a GPU and its CudnnRNNV3 runs the emulation (in eager mode and in
    graphs, via tf.numpy_function). Yields the list of kernel runs (at run time)."""
    if not tf.sysconfig.get_build_info().get("is_cuda_build"):
        pytest.skip("the backend lays out cuDNN parameters for CUDA builds only")  # never on the pinned TF
    runs = []

    def kernel(*, input, input_h, input_c, params, is_training, rnn_mode, sequence_lengths, time_major):
        assert not time_major

        def run(x, h, c, p, lengths):
            runs.append(rnn_mode)
            return emulated_cudnn_rnn_v3(x, h, c, p, lengths, rnn_mode)

        c_in = input_c if rnn_mode == "lstm" else tf.zeros_like(input_h)
        out, h, c = tf.numpy_function(run, [input, input_h, c_in, params, sequence_lengths], [tf.float32] * 3)
        out.set_shape([None, None, input_h.shape[-1]])
        h.set_shape(input_h.shape)
        c.set_shape(input_h.shape)
        return out, h, c, tf.constant(0), tf.constant(0)

    monkeypatch.setattr(tf_rnn, "_is_gpu_available", lambda: True)
    monkeypatch.setattr(tf.raw_ops, "CudnnRNNV3", kernel)
    return runs


MASKS = {
    "none": None,
    "right-padded": right_padded_mask(),
    "left-padded": np.arange(6)[None, :] >= np.array([0, 2, 5])[:, None],
}


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize(
    "return_sequences, go_backwards, zero_output_for_mask", list(itertools.product((False, True), repeat=3))
)
def test_fused_path_equals_the_cell_path(
    emulated_cudnn, kind, mask_name, return_sequences, go_backwards, zero_output_for_mask
):
    options = dict(
        return_sequences=return_sequences,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
        return_state=True,
    )
    fused, _, x = pair(kind, **options)
    cell_path = (rk.LSTM if kind == "lstm" else rk.GRU)(5, use_cudnn=False, **options)
    cell_path(x)
    cell_path.set_weights(fused.get_weights())
    emulated_cudnn.clear()  # the calls that built the layers
    mask = MASKS[mask_name]
    h0 = np.random.default_rng(2).normal(size=(3, 5)).astype("float32") * 0.5
    initial = [h0, h0 * 0.5] if kind == "lstm" else [h0]
    got = fused(x, mask=mask, initial_state=initial, training=True)
    want = cell_path(x, mask=mask, initial_state=initial, training=True)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # the kernel ran unless the mask is one cuDNN cannot express
    assert emulated_cudnn == ([] if mask_name == "left-padded" else [kind])


def test_emulated_kernel_agrees_with_keras_layers_own_cudnn_path(emulated_cudnn):
    """The emulation is right: keras.layers.LSTM through it equals keras.layers.LSTM's step loop."""
    _, theirs, x = pair("lstm", return_sequences=True)
    plain = keras.layers.LSTM(5, return_sequences=True, use_cudnn=False)
    plain(x)
    plain.set_weights(theirs.get_weights())
    emulated_cudnn.clear()
    np.testing.assert_allclose(theirs(x, training=True), plain(x), rtol=1e-5, atol=1e-5)
    assert emulated_cudnn == ["lstm"]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fused_path_inside_a_tf_function_with_a_mask(emulated_cudnn, kind):
    """In a graph the mask check is a tf.cond: right-padded masks run the kernel, others the cell."""
    fused, _, x = pair(kind, return_sequences=True)
    cell_path = (rk.LSTM if kind == "lstm" else rk.GRU)(5, return_sequences=True, use_cudnn=False)
    cell_path(x)
    cell_path.set_weights(fused.get_weights())

    @tf.function
    def run(x, mask):
        return fused(x, mask=mask, training=True)

    emulated_cudnn.clear()
    for mask, runs in ((MASKS["right-padded"], [kind]), (MASKS["left-padded"], [kind])):
        np.testing.assert_allclose(run(x, mask), cell_path(x, mask=mask), rtol=1e-5, atol=1e-5)
        assert emulated_cudnn == runs  # the left-padded batch took the cell branch of the cond
