"""Each request decoder run as the server runs it, for the fuzz targets and the property tests.

One fake model ``m`` (no runtime) with two signatures: ``serving_default`` takes ``x`` float32
``[-1, -1, 4]``; ``multi`` takes ``x``, ``ids`` int32 ``[-1, -1]`` and ``tag`` string ``[-1]``.
A :class:`~rnnkit_serving.dispatch.Dispatch` with a small element budget (:data:`BUDGET`) runs every
step: resolve, the front's codec, validation and limits, the non-finite check, the fake model,
and the front's encoder. The property every target checks:

- the request either succeeds or raises a :class:`~rnnkit_serving.errors.ServingError` whose code is
  a 4xx (any other exception, or a 5xx, is a finding);
- the decoded input arrays together hold at most :data:`BUDGET` elements.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rnnkit_serving import FakeBackend, Predictor  # noqa: E402
from rnnkit_serving.codecs.kserve import rest as kserve_codec  # noqa: E402
from rnnkit_serving.codecs.kserve import sequence as kserve_sequence  # noqa: E402
from rnnkit_serving.codecs.tfs import grpc as grpc_codec  # noqa: E402
from rnnkit_serving.codecs.tfs import json_tensor as tfs_json  # noqa: E402
from rnnkit_serving.codecs.tfs import rest as rest_codec  # noqa: E402
from rnnkit_serving.core.metrics import Metrics  # noqa: E402
from rnnkit_serving.core.signature import DEFAULT_SIGNATURE, Limits, Signature, TensorSpec  # noqa: E402
from rnnkit_serving.dispatch import Dispatch, ModelView, Target  # noqa: E402
from rnnkit_serving.errors import HTTP_STATUS, Code, ServingError  # noqa: E402
from rnnkit_serving.registry import ModelRegistry  # noqa: E402

BUDGET = 4096  # elements per request (the server's default is 8 Mi; small here so fuzzing reaches it)
X = TensorSpec("x", "float32", (None, None, 4))
IDS = TensorSpec("ids", "int32", (None, None))
TAG = TensorSpec("tag", "str", (None,))
Y = TensorSpec("y", "float32", (None, None, 4))
SIGNATURES = {
    DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, (X,), (Y,)),
    "multi": Signature("multi", (X, IDS, TAG), (Y,)),
}


def _model() -> Predictor:
    backends = {name: FakeBackend(signature) for name, signature in SIGNATURES.items()}
    return Predictor("m", 1, backends)


DISPATCH = Dispatch(
    ModelRegistry.of([_model()]),
    Metrics(),
    limits=Limits(max_batch_size=64, max_sequence_length=256, max_elements=BUDGET),
)


def _within_budget(inputs: Mapping[str, Any]) -> None:
    total = sum(int(np.asarray(v).size) for v in inputs.values())
    if total > BUDGET:
        raise AssertionError(f"decoded inputs hold {total} elements, above the budget {BUDGET}")


def _outcome(job: Callable[[], Any]) -> Code:
    """Run one request: OK, or the 4xx code of its ServingError; anything else propagates."""
    try:
        job()
    except ServingError as error:
        status = error.http_status or HTTP_STATUS[error.code]
        if status // 100 != 4:
            raise AssertionError(f"a malformed request got {status} {error.code.name}: {error.message}") from error
        return error.code
    return Code.OK


def tfs_json_request(body: bytes) -> Code:
    """A TF Serving REST ``:predict`` body, as ``rest_tfs`` decodes, runs and encodes it."""

    def decode(model: ModelView) -> rest_codec.RestPredictRequest:
        # float tensors straight into arrays when the body allows it, else the general parse (as the server)
        doc = tfs_json.parse_numeric_json(body, model.signatures)
        if doc is None:
            doc = tfs_json.parse_json(body)
        request = rest_codec.decode_predict_request(doc, model.signatures, DISPATCH.element_budget(model))
        _within_budget(request.inputs)
        return request

    def job() -> None:
        answer = DISPATCH.predict(Target("m"), decode)
        rest_codec.encode_predict_response(answer.outputs, answer.request.row_format)

    return _outcome(job)


def kserve_json_request(body: bytes) -> Code:
    """A KServe v2 REST ``infer`` body, as ``rest_kserve`` decodes, runs and encodes it."""

    def job() -> None:
        doc = kserve_codec.parse_numeric_body(body)  # float data as arrays, or None: the general parse
        if doc is None:
            doc = kserve_codec.parse_body(body)
        kserve_sequence.sequence_control(doc)

        def decode(model: ModelView) -> kserve_codec.InferRequest:
            signature = model.signature(DEFAULT_SIGNATURE)
            request = kserve_codec.decode_infer_request(doc, signature, budget=DISPATCH.element_budget(model))
            _within_budget(request.inputs)
            return request

        answer = DISPATCH.predict(Target("m"), decode)
        kserve_codec.encode_infer_response("m", answer.version, answer.outputs, answer.request.outputs, answer.request.id)

    return _outcome(job)


def grpc_request(request: Any) -> Code:
    """A ``PredictRequest`` message, as ``grpc_server`` decodes, runs and encodes it."""

    def job() -> None:
        spec = grpc_codec.model_spec(request.model_spec)

        def decode(model: ModelView) -> grpc_codec.GrpcPredictRequest:
            signature = model.signature(spec.signature_name)
            decoded = grpc_codec.decode_predict_request(request, signature, DISPATCH.element_budget(model))
            _within_budget(decoded.inputs)
            return decoded

        answer = DISPATCH.predict(Target(spec.name, spec.version, spec.label), decode)
        outputs = {k: answer.outputs[k] for k in answer.request.outputs}
        grpc_codec.encode_predict_response(outputs, answer.model, answer.version, spec.signature_name)

    return _outcome(job)


def grpc_bytes(data: bytes) -> Code | None:
    """Serialized ``PredictRequest`` bytes (the model name forced to ``m``); None when they do not
    parse (grpcio refuses those before the servicer runs)."""
    from google.protobuf.message import DecodeError

    try:
        request = grpc_codec.protos().predict.PredictRequest.FromString(data)
    except (DecodeError, RecursionError):
        return None
    if request.model_spec.name:
        request.model_spec.name = "m"
    return grpc_request(request)


def grpc_structured(data: bytes) -> Code | None:
    """A ``PredictRequest`` built from fuzz bytes field by field (names, dtypes, shapes, typed values or
    ``tensor_content``, output filter); odd first byte: the bytes parsed as a serialized message."""
    import atheris

    if not data or data[0] & 1:
        return grpc_bytes(data[1:])
    fdp = atheris.FuzzedDataProvider(data[1:])
    p = grpc_codec.protos()
    request = p.predict.PredictRequest()
    request.model_spec.name = fdp.PickValueInList(["m", "m", "m", "", "other"])
    request.model_spec.signature_name = fdp.PickValueInList(["", "serving_default", "multi", "nope"])
    if fdp.ConsumeBool():
        request.model_spec.version.value = fdp.ConsumeIntInRange(0, 2)
    names = ["x", "ids", "tag", "q"]
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        tensor = request.inputs[fdp.PickValueInList(names)]
        tensor.dtype = fdp.PickValueInList([1, 1, 2, 3, 4, 5, 6, 7, 9, 10, 17, 19, 22, 23, fdp.ConsumeIntInRange(0, 30)])
        for _ in range(fdp.ConsumeIntInRange(0, 5) if fdp.ConsumeProbability() < 0.95 else 40):
            tensor.tensor_shape.dim.add(size=fdp.PickValueInList([0, 1, 2, 3, 4, -1, fdp.ConsumeInt(8)]))
        tensor.tensor_shape.unknown_rank = fdp.ConsumeProbability() < 0.05
        kind = fdp.ConsumeIntInRange(0, 7)
        count = fdp.ConsumeIntInRange(0, 40)
        if kind == 0:
            tensor.tensor_content = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
        elif kind in (1, 2):
            getattr(tensor, "float_val" if kind == 1 else "double_val").extend(
                fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat() for _ in range(count)
            )
        elif kind == 3:
            tensor.int_val.extend(fdp.ConsumeIntInRange(-(2**31), 2**31 - 1) for _ in range(count))
        elif kind == 4:
            tensor.int64_val.extend(fdp.ConsumeIntInRange(-(2**63), 2**63 - 1) for _ in range(count))
        elif kind == 5:
            tensor.bool_val.extend(fdp.ConsumeBool() for _ in range(count))
        elif kind == 6:
            tensor.string_val.extend(fdp.ConsumeBytes(3) for _ in range(count))
        else:
            tensor.half_val.extend(fdp.ConsumeIntInRange(-(2**31), 2**31 - 1) for _ in range(count))
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        request.output_filter.append(fdp.PickValueInList(["y", "z"]))
    return grpc_request(request)


# ----------------------------------------------------------------------------------- atheris

HERE = os.path.dirname(os.path.abspath(__file__))


def fuzz_main(target: Callable[[bytes], object], corpus: str) -> None:
    """Run `target` under atheris (libFuzzer) with the serving package instrumented.

    libFuzzer flags pass through (``-runs=N``, ``-max_total_time=S``, ``-dict=...``). Without a
    corpus directory on the command line, new inputs go to a fresh temporary directory and the
    committed seeds (``corpus/<name>/``) are only read.
    """
    import tempfile

    import atheris

    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        args += [tempfile.mkdtemp(prefix=f"rnnkit-fuzz-{corpus}-"), os.path.join(HERE, "corpus", corpus)]
    if not any(a.startswith("-dict=") for a in args[1:]) and os.path.exists(os.path.join(HERE, f"{corpus}.dict")):
        args.append(f"-dict={os.path.join(HERE, f'{corpus}.dict')}")

    def one_input(data: bytes) -> None:
        target(data)

    atheris.Setup(args, one_input)
    atheris.Fuzz()


def write_seeds() -> None:
    """(Re)write the seed corpora under ``corpus/``: valid and typical malformed requests."""
    import json

    seeds: dict[str, list[bytes]] = {
        "tfs_json": [
            b'{"instances": [[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]]}',
            b'{"inputs": [[[1, 2, 3, 4]]], "signature_name": "serving_default"}',
            b'{"inputs": {"x": [[[1, 2, 3, 4]]]}}',
            b'{"signature_name": "multi", "instances": [{"x": [[1, 2, 3, 4]], "ids": [7], "tag": "a"}]}',
            b'{"signature_name": "multi", "inputs": {"x": [[[1, 2, 3, 4]]], "ids": [[7]], "tag": [{"b64": "AAE="}]}}',
            b'{"instances": [[[NaN, Infinity, -Infinity, 1e39]]]}',
            b'{"instances": [[[1, 2, 3]], [[1, 2, 3, 4]]]}',
            b'{"instances": ' + b"[" * 120 + b"]" * 120 + b"}",
        ],
        "kserve_json": [
            json.dumps(
                {
                    "id": "1",
                    "inputs": [{"name": "x", "shape": [1, 2, 4], "datatype": "FP32", "data": [0.5] * 8}],
                    "outputs": [{"name": "y"}],
                }
            ).encode(),
            b'{"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [[[1, 2, 3, 4]]]}]}',
            b'{"inputs": [{"name": "x", "shape": [1, 20000000, 4], "datatype": "FP32", "data": [1]}]}',
            b'{"parameters": {"sequence_id": 42, "sequence_start": true}, '
            b'"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}',
            b'{"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}',
            b'{"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}]}',
        ],
    }
    p = grpc_codec.protos()
    grpc_seeds = []
    for dtype, dims, field, values in (
        (1, (1, 2, 4), "float_val", [0.5] * 8),
        (1, (1, 20_000_000, 4), "float_val", [1.0]),
        (2, (1, 1, 4), "double_val", [1.0, 2.0, 3.0, 4.0]),
        (3, (1, 1, 4), "int_val", [1, 2, 3, 4]),
        (1, (1, 1, 4), "tensor_content", [b"\0" * 16]),
    ):
        request = p.predict.PredictRequest()
        request.model_spec.name = "m"
        tensor = request.inputs["x"]
        tensor.dtype = dtype
        for size in dims:
            tensor.tensor_shape.dim.add(size=size)
        if field == "tensor_content":
            tensor.tensor_content = values[0]
        else:
            getattr(tensor, field).extend(values)
        request.output_filter.append("y")
        grpc_seeds.append(b"\x01" + request.SerializeToString())  # odd first byte: parse the rest
    seeds["grpc"] = grpc_seeds
    for name, items in seeds.items():
        folder = os.path.join(HERE, "corpus", name)
        os.makedirs(folder, exist_ok=True)
        for index, data in enumerate(items):
            with open(os.path.join(folder, f"seed-{index:02d}"), "wb") as handle:
                handle.write(data)


if __name__ == "__main__":
    write_seeds()
