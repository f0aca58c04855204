"""Serving the int8/fp16 variants export published: Predictor.load(variant=...), RuntimeOptions,
`rnnkit serve --variant`, what the metadata reports, and the errors for a variant that is missing or
was refused by export's accuracy gate."""

import http.client
import json
import logging
import os
import warnings

import keras
import numpy as np
import onnxruntime as ort
import pytest

from rnnkit import layers as rk
from rnnkit_export import export_model
from rnnkit_serving import Predictor, RestOptions, app, spawn_server
from rnnkit_serving.config.batching_config import BatchingParameters
from rnnkit_serving.config.model_config import ModelConfig
from rnnkit_serving.core.repository_format import INT8_EXACT_SESSION_CONFIG
from rnnkit_serving.errors import ModelLoadError
from rnnkit_serving.runtime.backend import RuntimeOptions
from rnnkit_serving.scheduling.batching import Batcher
from rnnkit_serving.server.cli import configure_parser
from rnnkit_serving.server.model_server import load_registry

logging.getLogger("tf2onnx").setLevel(logging.ERROR)
F, CLASSES = 4, 3


def streaming_classifier():
    """Masking -> LSTM -> per-step class logits (scaled apart) and a final GRU state head."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((None, F), name="x")
    h = rk.LSTM(16, return_sequences=True, name="lstm")(keras.layers.Masking(0.0)(inp))
    head = keras.layers.Dense(CLASSES, name="head")
    model = keras.Model(inp, {"scores": head(h)})
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 6.0, bias])
    return model


def frames(rows, steps, seed):
    return np.random.default_rng(seed).normal(size=(rows, steps, F)).astype(np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("variants"))
    model = streaming_classifier()
    published = export_model(model, base, "clf", quantize="int8,fp16")
    assert published.variants["int8"]["published"] and published.variants["fp16"]["published"]
    export_model(model, base, "plain")
    refused = export_model(model, base, "refused", quantize="int8", variant_min_agreement=1.01)
    assert not refused.variants["int8"]["published"]
    return base


def bare(path, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the server (int8 kernels may split work differently per thread count)
    options.add_session_config_entry(*INT8_EXACT_SESSION_CONFIG)  # as the server: exact int8 kernels
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_predictor_runs_the_chosen_variant_files(repo):
    x = frames(3, 9, seed=1)
    model_dir = os.path.join(repo, "clf")
    with Predictor.load(model_dir) as fp32, Predictor.load(model_dir, variant="int8") as int8:
        assert fp32.variant == "fp32" and int8.variant == "int8"
        facts = int8.describe()
        assert facts["serving_default"]["file"] == "model.int8.onnx" and facts["step"]["file"] == "step.int8.onnx"
        assert facts["serving_default"]["variant"] == "int8"
        assert fp32.describe()["serving_default"]["file"] == "model.onnx"
        got, want = int8.predict({"x": x})["scores"], fp32.predict({"x": x})["scores"]
        # exactly what ONNX Runtime gives on the int8 file, close to (not equal to) fp32
        np.testing.assert_array_equal(got, bare(os.path.join(model_dir, "1", "model.int8.onnx"), x))
        assert 0 < np.abs(got - want).max() < 0.05 * max(1.0, np.abs(want).max())
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
        with int8.session() as session:  # streaming runs step.int8.onnx
            chunks = [session.step({"x": x[:, i : i + 3]})["scores"] for i in range(0, 9, 3)]
        assert np.abs(np.concatenate(chunks, axis=1) - want).max() < 0.05 * max(1.0, np.abs(want).max())


def test_runtime_options_choose_the_variant_and_fp16_on_cpu_warns(repo, caplog):
    model_dir = os.path.join(repo, "clf")
    x = frames(2, 6, seed=2)
    with Predictor.load(model_dir, options=RuntimeOptions(variant="int8")) as p:
        assert p.variant == "int8" and p.describe()["serving_default"]["file"] == "model.int8.onnx"
    with caplog.at_level(logging.WARNING, logger="rnnkit.serving"):
        with Predictor.load(model_dir, variant="fp16") as p, Predictor.load(model_dir) as fp32:
            assert p.describe()["serving_default"]["file"] == "model.fp16.onnx"
            got, want = p.predict({"x": x})["scores"], fp32.predict({"x": x})["scores"]
            assert got.dtype == np.float32 and np.abs(got - want).max() < 0.01 * max(1.0, np.abs(want).max())
    assert "serving the fp16 variant on CPU; it is meant for GPUs" in caplog.text


def test_missing_or_refused_variants_do_not_load(repo):
    with pytest.raises(ModelLoadError, match=r"has no int8 variant: it was exported without `--quantize int8`"):
        Predictor.load(os.path.join(repo, "plain"), variant="int8")
    with pytest.raises(ModelLoadError, match=r"accuracy gate refused it: .*below --variant_min_agreement 1.01"):
        Predictor.load(os.path.join(repo, "refused"), variant="int8")
    with pytest.raises(ValueError, match=r"argument `variant` must be one of \('fp32', 'int8', 'fp16'\)"):
        Predictor.load(os.path.join(repo, "clf"), variant="int4")
    with pytest.raises(ValueError, match="variant 'int8' needs backend 'onnx'"):
        Predictor.load(os.path.join(repo, "clf"), backend="tf", variant="int8")
    with Predictor.load(os.path.join(repo, "refused")) as p:  # its fp32 graphs still serve
        assert p.variant == "fp32"


def test_metadata_says_which_variant_serves(repo):
    registry = load_registry([ModelConfig("clf", os.path.join(repo, "clf"))], runtime=RuntimeOptions(variant="int8"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from starlette.testclient import TestClient

            with TestClient(app(registry, RestOptions())) as client:
                body = client.get("/v1/models/clf/metadata").json()
                x = frames(1, 5, seed=3)
                answer = client.post("/v1/models/clf:predict", json={"inputs": {"x": x.tolist()}}).json()
    finally:
        registry.close()
    assert body["rnnkit"]["variant"] == "int8"
    assert body["rnnkit"]["signatures"]["serving_default"]["file"] == "model.int8.onnx"
    want = bare(os.path.join(repo, "clf", "1", "model.int8.onnx"), x)
    np.testing.assert_allclose(answer["outputs"], want, atol=1e-6)  # one output: TF Serving gives it bare


def test_serve_flag(repo):
    parser = configure_parser(__import__("argparse").ArgumentParser())
    assert parser.parse_args(["--model_base_path", "m"]).variant == "fp32"
    assert parser.parse_args(["--model_base_path", "m", "--variant", "int8"]).variant == "int8"
    flags = ["--model_base_path", os.path.join(repo, "clf"), "--model_name", "clf", "--port", "0", "--variant", "int8"]
    with spawn_server(flags, timeout=120) as proc:
        conn = http.client.HTTPConnection("127.0.0.1", proc.rest_api_port, timeout=30)
        conn.request("GET", "/v1/models/clf/metadata")
        body = json.loads(conn.getresponse().read())
        conn.close()
    assert body["rnnkit"]["variant"] == "int8"
    assert body["rnnkit"]["signatures"]["step"]["file"] == "step.int8.onnx"


def test_batched_int8_answers_stay_within_the_gate_tolerance(repo):
    """int8 is not bit-exact under batching: ONNX Runtime's dynamic quantization picks one
    activation scale per call, so a row's answer depends (within the quantization error) on the
    rows it shares a call with. fp32 and fp16 batching stays exact (tests/test_serving_batching.py)."""
    rng = np.random.default_rng(4)
    with Predictor.load(os.path.join(repo, "clf"), variant="int8") as p, Predictor.load(os.path.join(repo, "clf")) as f:
        requests = [{"x": frames(1, int(rng.integers(3, 12)), seed=10 + i)} for i in range(24)]
        alone = [p.predict(r)["scores"] for r in requests]
        reference = [f.predict(r)["scores"] for r in requests]
        batcher = Batcher(BatchingParameters(16, 1_000_000, 1, 100))
        try:
            futures = [batcher.submit(p, p.validate(r)) for r in requests]
            batched = [future.result(timeout=60)["scores"] for future in futures]
        finally:
            batcher.close()
    for got, one, want in zip(batched, alone, reference):
        assert got.shape == one.shape
        scale = max(1.0, float(np.abs(want).max()))
        assert np.abs(got - one).max() < 0.05 * scale and np.abs(got - want).max() < 0.05 * scale
