"""rnnkit_serving.Predictor on an exported repository: both backends, validation, version choice,
device fallback, the fake backend, and the dependency rule in a live process."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import serving_repo

from rnnkit_serving import FakeBackend, Limits, ModelLoadError, Predictor, ServingError, Signature, TensorSpec

X = [[[1.0], [2.0], [5.0]]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("repo"))
    models = serving_repo.build_repository(base)
    return base, models


def test_half_plus_two_by_hand_on_both_backends(repo):
    base, _ = repo
    for backend in ("onnx", "tf"):
        with Predictor.load(os.path.join(base, "half", "1"), backend=backend) as p:
            y = p.predict({"x": X})["y"]
            np.testing.assert_allclose(y, [[[2.5], [3.0], [4.5]]], atol=1e-6)
            assert p.version == 1 and p.backend_name == backend


def test_model_dir_serves_latest_version(repo):
    base, _ = repo
    with Predictor.load(os.path.join(base, "half")) as p:
        assert p.version == 2
        np.testing.assert_allclose(p.predict({"x": X})["y"], serving_repo.expected_half_plus_two(X, 3.0), atol=1e-6)


def test_two_input_model_matches_keras_on_both_backends(repo):
    base, models = repo
    rng = np.random.default_rng(0)
    inputs = {"seq": rng.normal(size=(3, 7, 3)).astype(np.float32), "extra": rng.normal(size=(3, 2)).astype(np.float32)}
    want = {k: np.asarray(v) for k, v in models["pair"](inputs).items()}
    for backend in ("onnx", "tf"):
        with Predictor.load(os.path.join(base, "pair"), backend=backend) as p:
            got = p.predict(inputs)
            assert list(got) == ["logits", "probs"]
            for name in want:
                np.testing.assert_allclose(got[name], want[name], atol=1e-5)
            assert "step" not in p.signatures  # bidirectional: no streaming signature


def test_step_signature_carries_state(repo):
    base, _ = repo
    with Predictor.load(os.path.join(base, "half")) as p:
        sig = p.signature("step")
        assert sig.input_names == ["x", "lstm_h_in", "lstm_c_in"]
        out = p.predict({"x": X, "lstm_h_in": np.zeros((1, 2)), "lstm_c_in": np.zeros((1, 2))}, "step")
        assert set(out) == {"y", "lstm_h_out", "lstm_c_out"}
        with pytest.raises(ServingError, match='Serving signature key "nope" not found'):
            p.predict({"x": X}, "nope")


def test_validation_before_the_runtime(repo):
    base, _ = repo
    with Predictor.load(os.path.join(base, "half"), limits=Limits(max_batch_size=2, max_sequence_length=4)) as p:
        with pytest.raises(ServingError, match=r"input 'x' expects shape \[-1, -1, 1\], received \[1, 3, 2\]"):
            p.predict({"x": np.zeros((1, 3, 2))})
        with pytest.raises(ServingError, match="5 time steps, above the server limit 4"):
            p.predict({"x": np.zeros((1, 5, 1))})
        with pytest.raises(ServingError, match="batch size 3, above the server limit 2"):
            p.predict({"x": np.zeros((3, 1, 1))})
        with pytest.raises(ServingError, match=r"missing \['x'\], unexpected \['z'\]"):
            p.predict({"z": np.zeros((1, 1, 1))})
    with pytest.raises(ServingError, match="is closed"):
        p.predict({"x": X})


def test_gpu_request_without_cuda_falls_back_visibly(repo, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: no fallback to observe")
    base, _ = repo
    with caplog.at_level(logging.WARNING, logger="rnnkit.serving"):
        with Predictor.load(os.path.join(base, "half"), device="gpu") as p:
            assert "CUDAExecutionProvider is not available" in p.fallback
            assert p.describe()["serving_default"]["providers"] == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text
    with pytest.raises(ModelLoadError, match="device 'gpu' requested"):
        from rnnkit_serving import RuntimeOptions

        Predictor.load(os.path.join(base, "half"), device="gpu", options=RuntimeOptions(strict_device=True))
    with Predictor.load(os.path.join(base, "half"), device="auto") as p:
        assert p.fallback is None


def test_load_errors(repo, tmp_path):
    base, _ = repo
    with pytest.raises(ValueError, match="argument `backend` must be one of"):
        Predictor.load(base, backend="torch")
    with pytest.raises(ValueError, match="argument `device` must be one of"):
        Predictor.load(base, device="tpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        Predictor.load(str(tmp_path / "nothing"))
    (tmp_path / ".rnnkit-tmp-1-x").mkdir()  # staging dirs are not versions
    with pytest.raises(ModelLoadError, match="no versions under"):
        Predictor.load(str(tmp_path))
    broken = tmp_path / "m" / "1"
    shutil.copytree(os.path.join(base, "half", "1"), broken)
    os.remove(broken / "model.onnx")
    with pytest.raises(ModelLoadError, match="does not exist"):
        Predictor.load(str(broken))


def test_fake_backend_predictor():
    sig = Signature("serving_default", (TensorSpec("a", "float32", (None, 2)),), (TensorSpec("b", "float32", (None,)),))
    fake = FakeBackend(sig, lambda inputs: {"b": inputs["a"].sum(axis=1)})
    p = Predictor("fake", 1, {"serving_default": fake})
    assert p.predict({"a": [[1, 2], [3, 4]]})["b"].tolist() == [3.0, 7.0]
    assert fake.calls == 1
    p.close()
    assert fake.closed


def test_onnx_predictor_and_rest_app_load_no_keras_tensorflow_or_rnnkit(repo):
    base, _ = repo
    code = f"""
import json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import rnnkit_serving
p = rnnkit_serving.Predictor.load({os.path.join(base, "half")!r})
y = p.predict({{"x": np.ones((1, 3, 1), np.float32)}})["y"]
from starlette.testclient import TestClient
from rnnkit_serving.registry import ModelRegistry
client = TestClient(rnnkit_serving.app(ModelRegistry.of([p])))
reply = client.post("/v1/models/half:predict", json={{"instances": [[[1.0]]]}}).json()
print(json.dumps({{"y": y.tolist(), "reply": reply, "modules": sorted({{m.split('.')[0] for m in sys.modules}})}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["reply"] == {"predictions": [[[3.5]]]}
    assert "onnxruntime" in result["modules"]  # the check itself works
    assert not set(result["modules"]) & {"keras", "tensorflow", "rnnkit", "export", "tensorflow_serving"}
