"""export_model end to end: the version directory, the server configs, SavedModel, warmup,
streaming step graphs, atomicity and bad input."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from rnnkit import layers as rk
from rnnkit_export import ExportError, ExportOptions, export_model
from rnnkit_export.analysis.model_io import TensorInfo
from rnnkit_export.repository import configs
from rnnkit_export.repository.publish import RepositoryError
from rnnkit_export.savedmodel.warmup import read_warmup

logging.getLogger("tf2onnx").setLevel(logging.ERROR)
F = 3


def unidirectional_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, F), name="frames")
    m = keras.layers.Masking()(inp)
    y = rk.StackedRNN(6, num_layers=2, cell="lstm", connection="residual", return_sequences=True, name="enc")(m)
    y = rk.GRU(4, return_sequences=True, name="head_gru")(y)
    return keras.Model(inp, {"scores": keras.layers.Dense(2, name="dense")(y)})


def bidirectional_model():
    keras.utils.set_random_seed(1)
    inp = keras.Input((None, F), name="frames")
    y = rk.StackedRNN(5, num_layers=2, cell="gru", bidirectional=True, connection="highway")(
        keras.layers.Masking()(inp)
    )
    return keras.Model(inp, {"probs": keras.layers.Dense(3, activation="softmax")(y)})


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    uni = export_model(unidirectional_model(), str(base), "uni")
    bi = export_model(bidirectional_model(), str(base), "bi")
    return base, uni, bi


def test_version_directory_contents(repo):
    base, uni, bi = repo
    assert uni.version == 1 and uni.path == str(base / "uni" / "1")
    files = {os.path.relpath(os.path.join(d, f), uni.path) for d, _, fs in os.walk(uni.path) for f in fs}
    for expected in (
        "saved_model.pb",
        "model.onnx",
        "step.onnx",
        "rnnkit.json",
        "assets.extra/tf_serving_warmup_requests",
    ):
        assert expected in files, files
    assert "step.onnx" not in os.listdir(bi.path)  # bidirectional: no streaming
    assert not [e for e in os.listdir(base / "uni") if e.startswith(".")]  # no temp leftovers


def test_manifest(repo):
    _, uni, bi = repo
    manifest = json.load(open(os.path.join(uni.path, "rnnkit.json")))
    assert manifest["inputs"] == [{"name": "frames", "dtype": "float32", "shape": [None, None, F]}]
    assert manifest["outputs"] == [{"name": "scores", "dtype": "float32", "shape": [None, None, 2]}]
    assert manifest["signatures"] == ["serving_default", "step"]
    assert manifest["fused_layers"] == ["enc_lstm_0", "enc_lstm_1", "head_gru"]
    assert manifest["op_census"]["LSTM"] == 2 and manifest["op_census"]["GRU"] == 1
    assert "Loop" not in manifest["op_census"] and "Loop" not in manifest["step_op_census"]
    assert manifest["fallbacks"] == {}
    assert set(manifest["versions"]) >= {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "rnnkit"}
    states = [(s["input"], s["output"]) for s in manifest["streaming"]["states"]]
    assert states == [
        ("enc_lstm_0_h_in", "enc_lstm_0_h_out"),
        ("enc_lstm_0_c_in", "enc_lstm_0_c_out"),
        ("enc_lstm_1_h_in", "enc_lstm_1_h_out"),
        ("enc_lstm_1_c_in", "enc_lstm_1_c_out"),
        ("head_gru_h_in", "head_gru_h_out"),
    ]
    parity = manifest["parity"]
    assert parity["passed"] and parity["tolerance"] == 1e-5
    assert set(parity["max_abs_diff"]) == {
        "onnx/scores",
        "onnx_step/scores",
        "savedmodel/scores",
        "savedmodel_step/scores",
    }
    assert all(v <= 1e-5 for v in parity["max_abs_diff"].values())
    assert manifest["zero_padding_invariant"] is True  # Masking(0) in front
    bi_manifest = json.load(open(os.path.join(bi.path, "rnnkit.json")))
    assert bi_manifest["streaming"]["streamable"] is False
    assert "bidirectional" in bi_manifest["streaming"]["reason"]
    assert bi_manifest["signatures"] == ["serving_default"]


def test_models_config_parses_and_lists_every_model(repo):
    base, _, _ = repo
    config = text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert sorted(entries) == ["bi", "uni"]
    assert entries["uni"].base_path == str(base / "uni")
    assert entries["uni"].model_platform == "tensorflow"
    assert entries["uni"].model_version_policy.latest.num_versions == 1


def test_triton_configs_parse(repo):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is a dev extra")
    base, _, _ = repo
    config = text_format.Parse((base / "uni" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in config.input] == [("frames", [-1, F])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("scores", [-1, 2])]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.HasField("dynamic_batching")
    step = text_format.Parse((base / "uni_step" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert step.default_model_filename == "step.onnx"
    assert [(s.input_name, s.output_name, list(s.dims)) for s in step.sequence_batching.state][-1] == (
        "head_gru_h_in",
        "head_gru_h_out",
        [4],
    )
    assert all(s.initial_state[0].zero_data for s in step.sequence_batching.state)
    assert os.path.isfile(base / "uni_step" / "1" / "step.onnx")
    assert not (base / "bi_step").exists()


def test_savedmodel_signatures_and_warmup_replay(repo):
    _, uni, _ = repo
    loaded = tf.saved_model.load(uni.path)
    serve = loaded.signatures["serving_default"]
    assert sorted(serve.structured_input_signature[1]) == ["frames"]
    assert sorted(serve.structured_outputs) == ["scores"]
    step = loaded.signatures["step"]
    assert "enc_lstm_0_c_in" in step.structured_input_signature[1]
    assert "head_gru_h_out" in step.structured_outputs
    requests = read_warmup(uni.path)
    assert len(requests) == 8  # 2 signatures x 2 batch sizes x 2 lengths
    shapes = set()
    for request in requests:
        signature = loaded.signatures[request.model_spec.signature_name]
        feeds = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = signature(**{k: tf.constant(v) for k, v in feeds.items()})
        shapes.add(feeds["frames"].shape[:2])
        assert all(np.isfinite(v.numpy()).all() for v in outputs.values())
    assert shapes == {(1, 8), (1, 32), (8, 8), (8, 32)}


def test_savedmodel_runs_without_rnnkit_or_keras(repo):
    _, uni, _ = repo
    script = textwrap.dedent(
        """
        import sys
        sys.modules["keras"] = None      # importing either now fails
        sys.modules["rnnkit"] = None
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load(sys.argv[1])
        x = np.zeros((2, 5, 3), np.float32)
        out = loaded.signatures["serving_default"](frames=tf.constant(x))
        print(sorted(out), out["scores"].shape)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", script, uni.path], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "['scores'] (2, 5, 2)"
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--all", "--dir", uni.path], capture_output=True, text=True, env=env, timeout=300
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "signature_def['serving_default']" in shown.stdout and "signature_def['step']" in shown.stdout
    assert "inputs['frames']" in shown.stdout and "outputs['scores']" in shown.stdout


def test_step_onnx_streams_like_the_full_model(repo):
    _, uni, _ = repo
    full = ort.InferenceSession(os.path.join(uni.path, "model.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(os.path.join(uni.path, "step.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(2, 10, F)).astype("float32")
    want = full.run(["scores"], {"frames": x})[0]
    states = {i.name: np.zeros((2, i.shape[1]), np.float32) for i in step.get_inputs() if i.name.endswith("_in")}
    names = [o.name for o in step.get_outputs()]
    pieces = []
    for start, stop in ((0, 1), (1, 4), (4, 10)):
        out = dict(zip(names, step.run(names, {"frames": x[:, start:stop], **states})))
        pieces.append(out["scores"])
        states = {k: out[k[: -len("_in")] + "_out"] for k in states}
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), want, atol=1e-5)


def test_next_version_and_no_overwrite(repo, tmp_path):
    model = bidirectional_model()
    first = export_model(model, str(tmp_path), "m", formats="onnx", verify=False)
    second = export_model(model, str(tmp_path), "m", formats=["onnx"], verify=False)
    assert (first.version, second.version) == (1, 2)
    assert not os.path.exists(tmp_path / "models.config")  # no SavedModel, nothing for TF Serving
    with pytest.raises(RepositoryError, match=r"already exists; published versions are never overwritten"):
        export_model(model, str(tmp_path), "m", version=2, formats="onnx", verify=False)


def test_failure_after_savedmodel_leaves_nothing_visible(tmp_path):
    seen = {}

    def explode(staging):
        seen["files"] = sorted(os.listdir(staging))
        raise OSError("disk full (injected)")

    with pytest.raises(ExportError, match=r"export of 'm' version 1 failed, nothing was published: disk full"):
        export_model(bidirectional_model(), str(tmp_path), "m", _before_publish=explode)
    assert "saved_model.pb" in seen["files"] and "model.onnx" in seen["files"]
    assert os.listdir(tmp_path / "m") == []  # neither the version nor its staging directory
    assert not os.path.exists(tmp_path / "models.config")


def test_parity_failure_is_loud_and_publishes_nothing(tmp_path):
    with pytest.raises(
        ExportError, match=r"parity check failed for '.+': max \|difference\| .+ exceeds tolerance 1e-12"
    ):
        export_model(unidirectional_model(), str(tmp_path), "m", tolerance=1e-12)
    assert os.listdir(tmp_path / "m") == []


def test_layer_that_cannot_be_exported_at_all(tmp_path):
    inp = keras.Input((None, F), name="x")
    model = keras.Model(inp, rk.LSTM(4, activation="gelu", name="gelu_lstm")(inp))
    with pytest.raises(
        ExportError,
        match=r"could not be fused and tf2onnx's loop fallback .*\(layer 'gelu_lstm': .*'gelu' has no ONNX equivalent",
    ):
        export_model(model, str(tmp_path), "m", formats="onnx")
    assert os.listdir(tmp_path / "m") == []


def test_native_keras_layers_export_fused(tmp_path):
    inp = keras.Input((None, F), name="x")
    y = keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True), name="bi_gru")(inp)
    y = keras.layers.LSTM(4, name="last_lstm")(y)
    report = export_model(keras.Model(inp, y), str(tmp_path), "native")
    assert report.swapped_native_layers == ["bi_gru", "last_lstm"]
    assert report.zero_padding_invariant is False  # no mask: padded steps change the answer
    assert report.op_census["GRU"] == 1 and report.op_census["LSTM"] == 1 and "Loop" not in report.op_census
    assert report.outputs[0]["name"] == "last_lstm"
    assert report.parity["passed"]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            {"formats": "onnx,tflite"},
            ValueError,
            r"argument `formats` must be a non-empty subset of \('savedmodel', 'onnx'\)\. Received: formats=\['onnx', 'tflite'\]",
        ),
        ({"name": "bad name"}, RepositoryError, r"argument `model_name` must match .* Received: model_name='bad name'"),
        ({"version": 0}, ValueError, r"argument `version` must be a positive integer\. Received: version=0"),
        ({"opset": 11}, ExportError, r"argument `opset` must be in \[14, 18\]\. Received: opset=11"),
        (
            {"serving_base_path": "models"},
            RepositoryError,
            r"serving_base_path must be an absolute path or a URI where the repository is mounted for serving "
            r"\(e\.g\. /models\); received 'models'",
        ),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    args = {"name": "m", **kwargs}
    name = args.pop("name")
    with pytest.raises(error, match=match):
        export_model(bidirectional_model(), str(tmp_path), name, **args)
    assert not os.path.exists(tmp_path / "m") or os.listdir(tmp_path / "m") == []


def test_options_dataclass_and_keywords(tmp_path):
    """`export_model` takes an `ExportOptions`; keyword arguments of the same names override it, and
    a misspelt one is a TypeError naming it (before anything is written)."""
    options = ExportOptions(formats="onnx", verify=False, streaming="off")
    report = export_model(unidirectional_model(), str(tmp_path), "m", options, version=3)
    assert (report.version, report.formats, report.parity) == (3, ["onnx"], None)
    assert report.signatures == [] and report.streaming["mode"] == "off"
    assert sorted(os.listdir(report.path)) == ["model.onnx", "rnnkit.json"]
    with pytest.raises(TypeError, match=r"^export_model\(\) got an unexpected keyword argument 'tolerence'$"):
        export_model(unidirectional_model(), str(tmp_path), "m", tolerence=1e-3)
    with pytest.raises(TypeError, match=r"argument `options` must be an ExportOptions\. Received: int"):
        export_model(unidirectional_model(), str(tmp_path), "m", 4)
    assert [e for e in os.listdir(tmp_path / "m") if e.isdigit()] == ["3"]


def test_server_configs_render_without_the_file_system():
    """`configs` renders text from data only: models.config lists each SavedModel model once, sorted."""
    text = configs.models_config(["b", "a", "b"], "/here", serving_base="/models")
    assert text.count("config {") == 2 and text.index('"/models/a"') < text.index('"/models/b"')
    triton = configs.triton_config(
        "m", [TensorInfo("x", "float32", [None, None, 3])], [TensorInfo("y", "int64", [None])]
    )
    assert 'default_model_filename: "model.onnx"' in triton and "dims: [ -1, 3 ]" in triton and "TYPE_INT64" in triton
    with pytest.raises(RepositoryError, match=r"input 'x': dtype complex64 has no Triton type"):
        configs.triton_config("m", [TensorInfo("x", "complex64", [None])], [])


def test_unwritable_base_path_and_non_model(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RepositoryError, match=r"model_base_path '.*file' is not a writable directory"):
        export_model(bidirectional_model(), str(blocker), "m")
    with pytest.raises(ValueError, match=r"argument `model` must be a keras.Model\. Received: LSTM"):
        export_model(rk.LSTM(3), str(tmp_path), "m")


def test_cli_export(tmp_path, capsys):
    from rnnkit_cli import main

    path = tmp_path / "model.keras"
    unidirectional_model().save(path)
    assert main(["export", str(path), "--model_base_path", str(tmp_path / "repo"), "--model_name", "cli"]) == 0
    out = capsys.readouterr().out
    assert (
        "exported cli version 1" in out and "parity ok" in out and "streaming: step graph with 5 state tensor(s)" in out
    )
    assert main(["export", str(tmp_path / "missing.keras"), "--model_base_path", "x", "--model_name", "y"]) == 2
    assert "MODEL must be an existing .keras file. Received:" in capsys.readouterr().err
    assert (
        main(
            ["export", str(path), "--model_base_path", str(tmp_path / "repo"), "--model_name", "cli", "--version", "1"]
        )
        == 1
    )
    assert "already exists" in capsys.readouterr().err
    # --serving_base_path: models.config names the path servers mount the repository at
    assert (
        main(
            ["export", str(path), "--model_base_path", str(tmp_path / "repo"), "--model_name", "cli"]
            + ["--serving_base_path", "/models/", "--formats", "savedmodel", "--no-verify"]
        )
        == 0
    )
    config = text_format.Parse(
        (tmp_path / "repo" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    assert [(c.name, c.base_path) for c in config.model_config_list.config] == [("cli", "/models/cli")]
